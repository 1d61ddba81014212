"""Per-frame features for batch selection, from the inputs the batched UQ evaluation already built.

DeePMD-kit 3.2's ``forward_common_lower`` (what ``remote_al.fast_uq`` calls for energies and
forces) returns no descriptor, and the descriptor hooks of earlier versions are gone; the
descriptor comes from the atomic model's ``forward_embedding``, which takes the same extended
coordinates, types, neighbour list and mapping. ``embedding_from_lower`` calls it on the chunk
``fast_uq`` has prepared, for one member: the neighbour list is shared, and the call runs the
descriptor and fitting net forward only, without the force back-propagation (cost measured
in docs/benchmarks.md). ``frame_descriptor_features`` reduces the per-atom descriptor to
one row per frame: the mean over the atoms of each type, types side by side (a frame's
composition and local environments, independent of the number of atoms).

Heavy imports (torch, deepmd) happen inside the functions.
"""

from __future__ import annotations

import numpy as np


def frame_descriptor_features(descriptor: np.ndarray, atype: np.ndarray, ntypes: int) -> np.ndarray:
    """(F, ntypes * D): for each frame, the mean descriptor of its atoms of type t, t = 0..ntypes-1
    (zeros for a type the frame lacks). ``descriptor`` (F, N, D), ``atype`` (N,) shared by the
    frames (``fast_uq`` chunks frames with the same species sequence)."""
    descriptor = np.asarray(descriptor, dtype=float)
    atype = np.asarray(atype, dtype=int)
    nf, nat, d = descriptor.shape
    if atype.shape != (nat,):
        raise ValueError(f"atype must have {nat} entries, got shape {atype.shape}")
    out = np.zeros((nf, ntypes, d))
    for t in range(ntypes):
        mask = atype == t
        if mask.any():
            out[:, t] = descriptor[:, mask].mean(axis=1)
    return out.reshape(nf, ntypes * d)


def embedding_from_lower(dp, ext_coord: np.ndarray, mapping: np.ndarray, nlist: np.ndarray,
                         atype: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom descriptor (F, N, D) and last fitting hidden layer (F, N, H) of one loaded
    ``DeepPot`` (PyTorch backend) from ``fast_uq.neighbor_data``'s ``(ext_coord, mapping,
    nlist)`` and the member's type indices ``atype`` (N,). Forward only, no autograd."""
    import torch
    from deepmd.pt.utils.env import DEVICE, GLOBAL_PT_FLOAT_PRECISION

    inner = dp.deep_eval.dp.model["Default"]
    nf, nall, _ = ext_coord.shape
    ec = torch.from_numpy(np.ascontiguousarray(ext_coord)).to(DEVICE, GLOBAL_PT_FLOAT_PRECISION)
    ea = torch.from_numpy(np.asarray(atype)[mapping].astype(np.int64)).to(DEVICE).expand(nf, nall).contiguous()
    mp = torch.from_numpy(mapping.astype(np.int64)).to(DEVICE).expand(nf, nall).contiguous()
    nl = torch.from_numpy(np.ascontiguousarray(nlist)).to(DEVICE)
    with torch.no_grad():
        nl = inner.format_nlist(ec, ea, nl)  # cutoff and per-type sel, as forward_common_lower applies them
        out = inner.atomic_model.forward_embedding(ec, ea, nl, mp)
    return out["descriptor"].detach().cpu().numpy(), out["atomic_feature"].detach().cpu().numpy()
