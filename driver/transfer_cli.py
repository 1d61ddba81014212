"""``remote-al pull`` (a campaign's models, datasets and reports to this machine) and
``remote-al login`` (Globus login and collection consent for transfers).

``driver.cli`` imports its commands when they are asked for (``LAZY_VERBS``); each command hands its
options to a handler ``cmd_*(args) -> int`` (the exit status).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import click

from driver.errors import ConfigError
from driver.transfer import TransferItem, relative_to_root

PULL_KINDS = ("models", "datasets", "reports")
REPORT_DIRS = ("report", "reports")  # under the campaign directory
PULL_RECORD = "pull.json"


@click.command("pull")
@click.argument("campaign")
@click.option("--to", help="destination: a directory (local; default ./<campaign>-results), or a path under the "
              "--to-site root (globus; default <campaign>)")
@click.option("--what", default=",".join(PULL_KINDS), show_default=True, help=f"comma-separated, of {list(PULL_KINDS)}")
@click.option("--team", type=click.Path(path_type=Path), help="team file: transfer with Globus between its [sites]")
@click.option("--from-site", help="globus: the site holding the campaign's files")
@click.option("--to-site", help="globus: the site of this machine (e.g. Globus Connect Personal)")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="seconds to wait for a Globus "
              "transfer (it goes on afterwards; run pull again to keep watching)")
def pull_command(**kwargs) -> int:
    """Bring a campaign's models, datasets and reports to this machine.

    Copy what the campaign CAMPAIGN (its TOML file or directory) produced (models with
    checkpoints and learning curves, each generation's dataset, reports) through the
    transfer seam: a local copy with sha256 checks, or with --team a Globus transfer
    between two sites of the team file. Running it again while a transfer is in flight
    resumes watching it.
    """
    return cmd_pull(SimpleNamespace(**kwargs))


@click.command("login")
@click.option("--collection", multiple=True, help="collection id (repeatable)")
@click.option("--team", type=click.Path(path_type=Path), help="also every collection of the team file's [sites]")
@click.option("--force", is_flag=True, help="log in again even with valid tokens")
def login_command(**kwargs) -> int:
    """Log in to Globus for transfers and consent to collections.

    Log in (a browser the first time; with REMOTE_AL_CLIENT_ID/SECRET set, as the team's
    service identity) and consent to the data_access scope of Globus Connect Server
    collections. Tokens: REMOTE_AL_TOKEN_FILE, owner-only.
    """
    return cmd_login(SimpleNamespace(**kwargs))


def pull_items(state, root, kinds: Iterable[str], local: bool = True) -> list[TransferItem]:
    """What to pull, as paths relative to ``root`` (the campaign directory when local,
    the source site's root for Globus). A recorded path outside ``root`` is refused."""
    kinds = set(kinds)
    unknown = kinds - set(PULL_KINDS)
    if unknown:
        raise ConfigError("pull --what", f"unknown {sorted(unknown)}", f"use some of {list(PULL_KINDS)}")
    found: dict[str, bool] = {}  # relative path -> is a directory
    if "models" in kinds:
        for m in state.models():
            for p in (m["path"], m["checkpoint"], m["lcurve_path"]):
                if p and (not local or Path(p).exists()):
                    found[relative_to_root(root, p, local=local)] = False
    if "datasets" in kinds:
        for p in state.dataset_paths():
            if not local or Path(p).is_dir():
                found[relative_to_root(root, p, local=local)] = True
    if "reports" in kinds and local:
        for name in REPORT_DIRS:
            if (Path(root) / name).is_dir():
                found[relative_to_root(root, name, local=local)] = True
    return [TransferItem(rel, rel, is_dir) for rel, is_dir in found.items()]


def cmd_pull(args) -> int:
    from driver.config import campaign_directory
    from driver.state import StateMeta
    from driver.team import Site, read_team
    from driver.campaign import open_campaign_state
    from driver.transfer import safe_join, wait_for
    from driver.transfer_globus import GlobusTransfer
    from driver.transfer_local import LocalTransfer

    cdir = campaign_directory(args.campaign)
    state = open_campaign_state(cdir)
    name = cdir.name
    kinds = [k.strip() for k in args.what.split(",") if k.strip()]
    try:
        if args.team is None:
            dest = Path(args.to or f"{name}-results").resolve()
            dest.mkdir(parents=True, exist_ok=True)
            transfer = LocalTransfer({"campaign": Site(str(cdir.resolve())), "here": Site(str(dest))},
                                     StateMeta(state))
            src_site, dst_site, to_rel = "campaign", "here", "."
            items = pull_items(state, cdir.resolve(), kinds, local=True)
            interval = 0.0
        else:
            team = read_team(args.team)
            for flag, site in (("--from-site", args.from_site), ("--to-site", args.to_site)):
                if not site:
                    raise ConfigError(f"pull {flag}", "needed with --team",
                                      f"one of the team file's sites: {sorted(team.sites) or 'none'}")
            transfer = GlobusTransfer(team.sites, StateMeta(state))
            src_site, dst_site, to_rel = args.from_site, args.to_site, args.to or name
            items = pull_items(state, transfer.site(src_site).root, kinds, local=False)
            safe_join(transfer.site(dst_site).root, to_rel, local=False)
            interval = 10.0
        if not items:
            print(f"nothing to pull from {cdir} yet ({', '.join(kinds)})")
            return 0
        items = [TransferItem(it.src, str(Path(to_rel) / it.dst), it.recursive) for it in items]
        tid = transfer.submit_items(src_site, dst_site, items, label=f"remote-al pull {name}")
        print(f"pulling {len(items)} items from {src_site} to {dst_site}: transfer {tid}")
        try:
            status = wait_for(transfer, [tid], timeout_s=args.timeout, interval_s=interval, say=print)[tid]
        except TimeoutError as exc:
            print(str(exc))
            return 3
        print(f"done: {status.detail}")
        if args.team is None:
            record = {"campaign": str(cdir.resolve()), "transfer_id": tid, "finished": time.time(),
                      "detail": status.detail, "items": [it.dst for it in items]}
            (dest / PULL_RECORD).write_text(json.dumps(record, indent=1) + "\n")
            print(f"results in {dest}")
        return 0
    finally:
        state.close()


def cmd_login(args) -> int:
    from driver.team import read_team
    from driver.globus_auth import login, service_credentials

    collections = list(args.collection)
    if args.team:
        collections += [s.collection for s in read_team(args.team).sites.values() if s.collection]
    for c in collections:
        try:
            uuid.UUID(c)
        except ValueError:
            raise ConfigError("login --collection", f"{c!r} is not a collection id (a UUID)") from None
    collections = list(dict.fromkeys(collections))
    login(collections, force=args.force)
    who = "the service identity" if service_credentials() else "you"
    print(f"logged in as {who}" + (f"; data_access consent for {', '.join(collections)}" if collections else ""))
    return 0


__all__ = ["pull_items", "cmd_pull", "cmd_login"]
