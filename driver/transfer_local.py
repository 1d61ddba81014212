"""Local transfers: copies between site roots on this machine, verified by sha256 (the
embedded default of the transfer seam, ``driver.transfer``)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, MutableMapping

from driver.team import Site
from driver.transfer import (
    ACTIVE,
    CHUNK,
    FAILED,
    SUCCEEDED,
    Transfer,
    TransferError,
    TransferItem,
    TransferStatus,
    safe_join,
    sha256_file,
)


def _default_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


class LocalTransfer(Transfer):
    """Copies between site roots on this machine (the embedded default).

    ``copy_file(src, tmp)``: how bytes get from a source file to the temporary file
    (default: a plain copy with fsync); whatever it writes is verified by sha256.
    The copy happens inside ``submit``; ``poll`` reports its recorded outcome.
    """

    name = "local"

    def __init__(self, sites: Mapping[str, Site], meta: MutableMapping[str, str] | None = None,
                 copy_file: Callable[[Path, Path], None] = _default_copy):
        super().__init__(sites, meta)
        self.copy_file = copy_file

    def _submit(self, src_site: str, dst_site: str, items: list[TransferItem], label: str) -> str:
        dst_root = self.site(dst_site).root
        # The whole file list, each path checked, before anything moves.
        files = [(src, safe_join(dst_root, rel)) for it in items for src, rel in self._files(src_site, it)]
        tid = f"local-{uuid.uuid4()}"
        self._save(tid, label=label, src_site=src_site, dst_site=dst_site,
                   items=[[it.src, it.dst] for it in items], state=ACTIVE, detail="", submitted=time.time())
        copied = unchanged = nbytes = 0
        try:
            for src, dst in files:
                if self._copy_verified(src, dst):
                    copied += 1
                    nbytes += src.stat().st_size
                else:
                    unchanged += 1
            status = TransferStatus(SUCCEEDED, f"{copied} files copied ({nbytes} bytes), {unchanged} "
                                               "unchanged; sha256 verified")
        except (OSError, TransferError) as exc:
            status = TransferStatus(FAILED, f"{type(exc).__name__}: {exc}")
        self._finish(tid, status)
        return tid

    def poll(self, transfer_id: str) -> TransferStatus:
        rec = self.records().get(transfer_id)
        if rec is None:
            raise TransferError(f"no local transfer {transfer_id} in this campaign's records")
        if rec["state"] == ACTIVE:  # the copying process died before it finished
            return self._finish(transfer_id, TransferStatus(
                FAILED, "interrupted before it finished (files are complete or absent, never half-written "
                "under their own names); submit it again"))
        return TransferStatus(rec["state"], rec.get("detail", ""))

    def _files(self, src_site: str, item: TransferItem) -> Iterable[tuple[Path, str]]:
        """(source file, destination path relative to the destination root) pairs."""
        root = self.site(src_site).root
        src = safe_join(root, item.src)
        if not src.exists():
            raise TransferError(f"{item.src} does not exist in site {src_site!r} ({root})")
        if not src.is_dir():
            if item.recursive:
                raise TransferError(f"{item.src} is a file, not a directory")
            yield src, item.dst
            return
        for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
            parts = Path(dirpath).relative_to(src).parts
            real = safe_join(root, PurePosixPath(item.src, *parts)).resolve()
            ancestors = {safe_join(root, PurePosixPath(item.src, *parts[:k])).resolve()
                         for k in range(len(parts))}
            if real in ancestors:  # a symlink back up the tree: a loop
                dirnames[:] = []
                continue
            rel_dir = PurePosixPath(*parts)
            dirnames.sort()
            for name in sorted(filenames):
                rel = rel_dir / name
                yield safe_join(root, PurePosixPath(item.src) / rel), str(PurePosixPath(item.dst) / rel)

    def _copy_verified(self, src: Path, dst: Path) -> bool:
        """Copy ``src`` to ``dst`` through a verified temporary file; False if unchanged."""
        want = sha256_file(src)
        if dst.is_dir():
            raise TransferError(f"destination {dst} is a directory, source {src} a file")
        if dst.exists() and sha256_file(dst) == want:
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        for stale in dst.parent.glob(f".{dst.name}.part-*"):  # left by a killed copy
            stale.unlink(missing_ok=True)
        tmp = dst.with_name(f".{dst.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            self.copy_file(src, tmp)
            got = sha256_file(tmp)
            if got != want:
                raise TransferError(f"checksum mismatch copying {src} to {dst}: sha256 {got[:12]}... "
                                    f"!= {want[:12]}...; destination left unchanged")
            shutil.copymode(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return True
