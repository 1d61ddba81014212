"""Where each pool sees the campaign, and staging of inputs between sites.

The embedded default has one filesystem: every pool reads and writes the campaign
directory itself and nothing moves. On a real deployment the GPU partition, the CPU
partition and the laptop may each have their own filesystem. The team file's
``[sites.<name>]`` tables say which pools (``pools = ["gpu"]``; ``"driver"`` for the
driver's machine) see which root; a campaign named C keeps its files under
``<root>/C/`` on every site, with the same layout as the campaign directory.

For a task on a pool whose site is not the driver's:

- the paths in its request (``workdir``, and the training ``systems``) are rewritten to
  that site's copy of the campaign;
- inputs the driver produced (a generation's exported dataset) are *staged*: a transfer
  (``driver.transfer``: local copy with checksums, or Globus Transfer) from the driver's
  site to the pool's site is started before the task is submitted, and the task waits,
  ``pending``, until the transfer has SUCCEEDED. Transfer ids are kept in the campaign
  state (``meta``), so a restarted driver resumes watching them and never starts the same
  staging twice; a FAILED transfer fails the task with the transfer's reason (then the
  usual retries and quarantine).

Artifacts the pools produce for each other need no staging here: models are written and
read on the GPU site (training, MD, UQ and relaxations share it); labels come back inside
the results. ``remote-al pull`` brings models and datasets back to the laptop.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Mapping, MutableMapping

from driver.team import Site
from driver.errors import ConfigError
from driver.transfer import FAILED, SUCCEEDED, Transfer, TransferError, TransferItem, relative_to_root

DRIVER = "driver"
META_STAGING = "staging"  # meta key: JSON {label: transfer id}
PATH_LISTS = ("systems", "validation_systems")


class StagingFailed(TransferError):
    """Raised while staging a task's inputs when a transfer it waits on failed; the message
    carries the transfer's reason."""


class Placement:
    """Pools -> sites, path mapping and staging for one campaign directory."""

    def __init__(
        self,
        campaign_dir: str | Path,
        sites: Mapping[str, Site] | None = None,
        transfer: Transfer | None = None,
        meta: MutableMapping[str, str] | None = None,
    ):
        self.campaign_dir = Path(campaign_dir).resolve()
        self.name = self.campaign_dir.name
        sites = dict(sites or {})
        self.pool_site: dict[str, str] = {}
        for site_name, site in sites.items():
            for pool in site.pools:
                if pool in self.pool_site:
                    raise ConfigError(f"team.sites.{site_name}.pools",
                                      f"pool {pool!r} is also on site {self.pool_site[pool]!r}",
                                      "list each pool on one site only")
                self.pool_site[pool] = site_name
        if DRIVER not in self.pool_site:  # the driver's own filesystem: the campaign's parent
            sites[DRIVER] = Site(root=str(self.campaign_dir.parent), pools=(DRIVER,))
            self.pool_site[DRIVER] = DRIVER
        else:
            name = self.pool_site[DRIVER]
            if Path(sites[name].root).expanduser().resolve() != self.campaign_dir.parent:
                raise ConfigError(f"team.sites.{name}.root",
                                  f"the driver's site root {sites[name].root} is not the campaign's parent "
                                  f"directory {self.campaign_dir.parent}",
                                  f"set the campaign's workdir to {sites[name].root}/{self.name}, or the root "
                                  "to the campaign's parent")
        self.sites = sites
        self.transfer = transfer
        self.meta = meta if meta is not None else {}
        if transfer is not None:
            transfer.sites.update({k: v for k, v in sites.items() if k not in transfer.sites})
        if self.remote_pools() and transfer is None:
            raise ConfigError("team.sites", f"pools {self.remote_pools()} are on other sites but no transfer "
                              "is configured", "pass a Transfer (local or globus) to the campaign")

    # ------------------------------------------------------------- where
    def site_of(self, pool: str) -> str:
        return self.pool_site.get(pool, self.pool_site[DRIVER])

    def remote(self, pool: str) -> bool:
        return self.site_of(pool) != self.site_of(DRIVER)

    def remote_pools(self) -> list[str]:
        return sorted(p for p in self.pool_site if p != DRIVER and self.remote(p))

    def relative(self, local_path: str | Path) -> str:
        """A path of the campaign directory as a path relative to it (refuses others)."""
        return relative_to_root(self.campaign_dir, local_path)

    def path_on(self, pool: str, local_path: str | Path) -> str:
        """Where ``local_path`` (inside the campaign directory) is on ``pool``'s site."""
        if not self.remote(pool):
            return str(local_path)
        root = PurePosixPath(self.sites[self.site_of(pool)].root)
        return str(root / self.name / self.relative(local_path))

    # ------------------------------------------------------------ requests
    def translate(self, pool: str, request: dict) -> tuple[dict, list[str]]:
        """The request as ``pool`` must see it, and the campaign-relative inputs to stage."""
        if not self.remote(pool):
            return request, []
        req = dict(request)
        if "workdir" in req:
            req["workdir"] = self.path_on(pool, req["workdir"])
        stage: list[str] = []
        for key in PATH_LISTS:
            if req.get(key):
                rels = [self.relative(p) for p in req[key]]
                req[key] = [self.path_on(pool, Path(self.campaign_dir, r)) for r in rels]
                stage += rels
        return req, stage

    # ------------------------------------------------------------- staging
    def _label(self, pool: str, rel: str) -> str:
        # Globus labels: letters, digits, space, - _ , . only
        return re.sub(r"[^A-Za-z0-9 _,.\-]", "-", f"remote-al {self.name} {rel} to {self.site_of(pool)}")[:128]

    def _staged(self) -> dict[str, str]:
        return json.loads(self.meta.get(META_STAGING) or "{}")

    def ready(self, pool: str, rels: list[str]) -> bool:
        """True when every input in ``rels`` is on ``pool``'s site; starts the transfers
        not started yet. Raises :class:`StagingFailed` for a failed transfer."""
        if not rels or not self.remote(pool):
            return True
        assert self.transfer is not None
        staged = self._staged()
        src, dst = self.site_of(DRIVER), self.site_of(pool)
        all_done = True
        for rel in rels:
            label = self._label(pool, rel)
            tid = staged.get(label)
            if tid is None:
                path = str(PurePosixPath(self.name) / rel)
                recursive = Path(self.campaign_dir, rel).is_dir()
                tid = self.transfer.submit_items(src, dst, [TransferItem(path, path, recursive)], label)
                staged[label] = tid
                self.meta[META_STAGING] = json.dumps(staged, sort_keys=True)
            status = self.transfer.poll(tid)
            if status.state == FAILED:
                staged.pop(label, None)  # a retry of the task starts a fresh transfer
                self.meta[META_STAGING] = json.dumps(staged, sort_keys=True)
                raise StagingFailed(f"staging {rel} to site {dst!r} failed (transfer {tid}): {status.detail}")
            if status.state != SUCCEEDED:
                all_done = False
        return all_done

    def in_flight(self) -> dict[str, str]:
        """``{label: transfer id}`` of stagings started (finished or not)."""
        return self._staged()


__all__ = ["Placement", "StagingFailed", "DRIVER"]
