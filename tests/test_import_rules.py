"""The import rules of pyproject.toml's [tool.importlinter] hold: remote_al never imports
driver; the driver never imports torch, deepmd, chgnet or gpaw (not even through remote_al,
apart from the exceptions listed there with their reasons); the driver's layers are in
order. Runs the real `lint-imports` of this environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_are_kept():
    assert LINT_IMPORTS.exists(), "import-linter is missing: pip install -e '.[dev]'"
    proc = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
