"""The screenshots of docs/quickstart.md: `remote-al status` and the HTML report of a campaign.

    .venv/bin/python scripts/screenshots.py campaigns/linio2 docs/img

needs headless Chromium (Debian: `apt-get install -y chromium`). The status output is
recorded by rich at 100 columns, written as SVG (rich's terminal export) and rendered to
PNG by Chromium; the report's index.html is rendered by Chromium as it is. The campaign
needs a report already (`remote-al report DIR` or `run --report`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no chromium on PATH (Debian: apt-get install -y chromium)")


def shoot(url: str, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


def status_svg(campaign: Path, svg: Path, columns: int = 100) -> None:
    """`remote-al status` as the terminal shows it, recorded as SVG."""
    from rich.console import Console
    from rich.text import Text

    env = {**os.environ, "COLUMNS": str(columns), "FORCE_COLOR": "1", "TERM": "xterm-256color"}
    out = subprocess.run([sys.executable, "-m", "driver.cli", "status", str(campaign)], env=env,
                         capture_output=True, text=True, check=True).stdout
    con = Console(record=True, width=columns, force_terminal=True, file=open(os.devnull, "w"))
    con.print(Text.from_ansi(out))
    con.save_svg(str(svg), title=f"remote-al status {campaign}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("campaign", type=Path)
    ap.add_argument("outdir", type=Path)
    args = ap.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "status.svg"
        status_svg(args.campaign, svg)
        w, h = map(float, re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg.read_text()).groups())
        page = Path(tmp) / "status.html"  # the SVG at the window's width, no margin around it
        page.write_text(f'<html><body style="margin:0"><img src="{svg.name}" style="width:100%;display:block">'
                        "</body></html>")
        shoot(page.resolve().as_uri(), (args.outdir / "status.png").resolve(), 1000, int(1000 * h / w) + 1)
    index = args.campaign / "report" / "index.html"
    if not index.exists():
        sys.exit(f"no report at {index}: run `remote-al report {args.campaign}` first")
    shoot(index.resolve().as_uri(), (args.outdir / "report.png").resolve(), 1200, 2200)


if __name__ == "__main__":
    main()
