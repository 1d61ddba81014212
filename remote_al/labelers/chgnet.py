"""CHGNet labeler: the embedded default, a stand-in for DFT.

CHGNet is a pretrained universal potential whose weights ship inside its wheel, so a
laptop run needs no download. Its labels are named as a stand-in in every output
(``labeler_note``), never as DFT.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from remote_al.labelers.base import Labeler, LabelingError, validate_label, validated_settings
from remote_al.records import STAND_IN_NOTE, Label


_MODELS: dict = {}  # one loaded model per worker process and device


@dataclass(frozen=True)
class CHGNetSettings:
    """The ``settings`` mapping of the chgnet labeler, checked."""

    threads: int = 1  # torch threads per labeling task
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "mps"

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> "CHGNetSettings":
        """Checked settings (keys, types, bounds); raises LabelingError."""

        def refusals(values):
            device = values.get("device", "cpu")
            if isinstance(device, str) and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
                yield ("device",), f"{device!r} is not a torch device", "use 'cpu', 'cuda', 'cuda:0' or 'mps'"

        return validated_settings(cls, settings, refusals=refusals, bounds={"threads": {"ge": 1, "le": 256}})


class CHGNetLabeler(Labeler):
    name = "chgnet"
    note = STAND_IN_NOTE
    _label_calc = None  # the calculator of label(), made on its first call

    def _calculator(self):
        settings = CHGNetSettings.from_mapping(self.settings)  # before any import or model load
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            import torch
            from chgnet.model.dynamics import CHGNetCalculator
            from chgnet.model.model import CHGNet
        except ImportError as exc:
            raise LabelingError(
                f"CHGNet is not installed on this endpoint ({exc}); install remote-al[endpoint]"
            ) from exc
        torch.set_num_threads(settings.threads)
        device = settings.device
        if device not in _MODELS:
            _MODELS[device] = CHGNet.load(verbose=False, use_device=device)
        model = _MODELS[device]
        return CHGNetCalculator(model=model, use_device=device)

    def relax_calculator(self, atoms, workdir: Path):
        return self._calculator()

    def label(self, structures: Sequence, structure_ids: Sequence[int], workdir: Path) -> list[Label]:
        if self._label_calc is None:  # once: the label journal calls label() once a structure
            self._label_calc = self._calculator()
        calc = self._label_calc
        labels = []
        for atoms, sid in zip(structures, structure_ids):
            t0 = time.time()
            a = atoms.copy()
            a.calc = calc
            try:
                energy = float(a.get_potential_energy())
                forces = a.get_forces()
                stress = a.get_stress(voigt=True)
                try:
                    magmoms = calc.results.get("magmoms")
                except Exception:
                    magmoms = None
                label = Label(
                    structure_id=int(sid),
                    status="ok",
                    energy=energy,
                    forces=tuple(tuple(float(c) for c in f) for f in forces),
                    stress=tuple(float(s) for s in stress),
                    magmoms=None if magmoms is None else tuple(float(m) for m in magmoms),
                    wall_s=time.time() - t0,
                )
            except Exception as exc:  # one bad structure must not lose the others
                label = Label(int(sid), "failed", reason=f"CHGNet raised {type(exc).__name__}: {exc}")
            labels.append(validate_label(label, len(atoms)))
        return labels
