"""Faster batched ensemble evaluation for UQ: what ``ensemble.predict_ensemble`` runs.

Same arguments, same results (energies ``(M, F)``, a list of ``F`` force arrays
``(M, N_f, 3)``), same numbers to ~1e-13 eV and eV/A. Where the time of
``DeepPot.eval`` goes for small periodic cells on one CPU thread, and what this
module does about it (measured with ``benchmarks/uq_levers.py``):

1. TorchScript warm-up. A frozen ``.pth`` model runs under PyTorch's profiling
   graph executor: its first three calls after loading profile and re-optimise the
   graph and take ~1 s each (32-atom cell, one thread) - far more than the ~20 ms
   of a warm call, so a UQ task that loads its members afresh pays ~3 s per member
   before evaluating anything. On CPU the optimised graph is no faster than the
   plain interpreter (no fusion of the fp64 ops), so the evaluation here runs inside
   ``torch.jit.optimized_execution(False)``: the first call costs ~40-70 ms and the
   results agree with the optimised graph's to 3e-16. The flag is global in PyTorch
   and is restored on exit. (On a GPU, where the optimised graph may fuse kernels,
   this was not measured.)
2. Neighbour lists. ``DeepPot.eval`` builds one per frame (vesin, or DeePMD's
   all-pairs builder) and per member. Here it is built once per chunk of frames
   with the same species sequence, vectorised over the frames with numpy, and
   shared by all members with the same cutoff; frames of a chunk share one set of
   periodic images (the union of the images any of them needs), so the chunk
   stacks without padding.
3. Per-call Python overhead of ``DeepPot.eval`` (auto batch size, which on CPU
   also caps a call at 1024 atoms; ``module.to(device)`` over every submodule;
   output conversion). The model's ``forward_common_lower`` is called directly,
   with ``batch_size`` frames per call (on CPU at most ``_CPU_ATOMS_PER_CALL``
   atoms, which bounds the memory of large cells).

The model itself (descriptor, fitting, autograd for forces) is untouched: the
neighbour list is handed to it nearest first, padded with -1, and the model's own
``format_nlist`` applies the cutoff and the per-type ``sel`` exactly as it does for
DeepPot's lists. Models this path does not cover (spin, hessian, data modifier,
frame/atomic parameters, non-energy models, non-periodic frames, cells so large
that the dense image search would need more than ``_MAX_PAIRS`` candidate pairs)
are evaluated with ``DeepPot.eval`` on the same chunks, still without the warm-up.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

_MAX_PAIRS = 4_000_000  # atoms x candidate images of one frame above which DeepPot.eval is used
_CHUNK_PAIRS = 131_072  # pairs per step of the search (a few frames of a small cell)
_CPU_ATOMS_PER_CALL = 2048  # atoms per model call on CPU (DeepPot.eval: 1024), bounds memory


def _images(cells: np.ndarray, frac: np.ndarray, rcut: float) -> np.ndarray:
    """Integer lattice shifts (n_shift, 3), zero first, that can bring any atom within rcut."""
    # frac = pos @ inv(cell): column k of inv(cell) is the reciprocal vector b_k, and
    # |b_k| = 1 / (height of the cell along k). An image S of atom j lies within rcut
    # of atom i only if |frac_j - frac_i + S_k| <= rcut |b_k| for every k.
    inv = np.linalg.inv(cells)
    reach = rcut * np.linalg.norm(inv, axis=1)  # (F, 3), in fractional units
    spread = frac.max(axis=1) - frac.min(axis=1)  # (F, 3)
    n = np.floor(spread + reach + 1e-9).max(axis=0).astype(int)
    grid = np.stack(
        np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    order = np.argsort(np.abs(grid).sum(axis=1), kind="stable")  # (0, 0, 0) first
    return grid[order]


def _reduced(cells: np.ndarray) -> np.ndarray:
    """The same lattices in a Minkowski-reduced basis (of the first cell): fewer images to search."""
    try:
        from ase.geometry.minkowski_reduction import minkowski_reduce

        _, op = minkowski_reduce(cells[0])
        return np.einsum("ij,fjk->fik", op.astype(np.float64), cells)
    except Exception:  # any basis of the lattice is correct, a reduced one only faster
        return cells


def neighbor_data(coords: np.ndarray, cells: np.ndarray, rcut: float):
    """Extended system and neighbour list for F periodic frames of the same N atoms.

    ``coords`` (F, N, 3), ``cells`` (F, 3, 3), rows are lattice vectors. Returns
    ``(ext_coord (F, nall, 3), mapping (nall,), nlist (F, N, nnei))``: the first N
    extended atoms are the local ones, wrapped into the (reduced) cell, the rest the
    periodic images of them that some frame of the chunk needs, and ``nlist`` holds,
    per atom, the extended indices of its neighbours within rcut (plus a margin of
    ~1e-6 A for rounding; the model applies the exact cutoff), nearest first,
    padded with -1. Returns None (the caller falls back to DeepPot.eval) for empty
    frames, degenerate cells, and when the dense search would exceed ``_MAX_PAIRS``
    candidate pairs for a single frame.
    """
    coords = np.asarray(coords, dtype=np.float64)
    nf, nat, _ = coords.shape
    cells = np.asarray(cells, dtype=np.float64)
    if nat == 0 or nf == 0 or np.any(np.abs(np.linalg.det(cells)) < 1e-6):
        return None  # nothing to search, or no lattice to search it in
    cells = _reduced(cells)
    frac = np.einsum("fni,fij->fnj", coords, np.linalg.inv(cells))
    wrap = np.floor(frac)
    local = coords - np.einsum("fnk,fkj->fnj", wrap, cells)
    shifts = _images(cells, frac - wrap, rcut)
    ncand = len(shifts) * nat
    if nat * ncand > _MAX_PAIRS:
        return None
    # candidates: every atom under every shift, (F, ncand, 3), shift-major, shift 0 first
    offsets = np.einsum("sk,fkj->fsj", shifts.astype(np.float64), cells)
    cand = (local[:, None, :, :] + offsets[:, :, None, :]).reshape(nf, ncand, 3)
    cand_atom = np.tile(np.arange(nat), len(shifts))
    c2 = np.einsum("fki,fki->fk", cand, cand)
    l2 = np.einsum("fni,fni->fn", local, local)
    r2 = (rcut + 1e-6) ** 2
    diag = np.arange(nat)
    step = max(1, _CHUNK_PAIRS // (nat * ncand))  # a few frames at a time: stays in cache
    hits = []  # (frame, i, candidate) of pairs within the cutoff
    for s in range(0, nf, step):
        # |p_i - c_k|^2 = |p_i|^2 + |c_k|^2 - 2 p_i.c_k; the margin covers its rounding
        d2 = np.matmul(local[s : s + step], cand[s : s + step].transpose(0, 2, 1))
        d2 *= -2.0
        d2 += l2[s : s + step, :, None]
        d2 += c2[s : s + step, None, :]
        within = d2 <= r2
        within[:, diag, diag] = False  # an atom is not its own neighbour
        f, i, k = np.nonzero(within)
        hits.append((f + s, i, k))
    f, i, k = (np.concatenate(x) for x in zip(*hits))
    # one extended set for the chunk: local atoms, then every image some frame uses
    used = np.zeros(ncand, dtype=bool)
    used[k] = True
    used[:nat] = True
    keep = np.flatnonzero(used)
    new_index = np.full(ncand, -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    ext_coord = cand[:, keep, :]
    mapping = cand_atom[keep]
    # dense (F, N, nnei) list, each row nearest first as DeepPot's builders give it (the
    # model keeps the first sel[t] neighbours of each type t when there are more)
    row = f * nat + i
    dist = np.linalg.norm(cand[f, k] - local[f, i], axis=-1)
    order = np.argsort(row + dist / (2.0 * rcut + 1.0), kind="stable")
    row, k = row[order], k[order]
    counts = np.bincount(row, minlength=nf * nat)
    nnei = max(1, int(counts.max()))
    col = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    nlist = np.full((nf * nat, nnei), -1, dtype=np.int64)
    nlist[row, col] = new_index[k]
    return ext_coord, mapping, nlist.reshape(nf, nat, nnei)


def _lower_ok(dp) -> bool:
    """Whether a loaded DeepPot can be evaluated through forward_common_lower here."""
    de = getattr(dp, "deep_eval", None)
    try:
        inner = de.dp.model["Default"]
        self_built = getattr(inner, "use_self_built_nlist", None)
        return (
            type(de).__module__ == "deepmd.pt.infer.deep_eval"
            and not getattr(de, "_has_spin", True)
            and not getattr(de, "_has_hessian", True)
            and getattr(de, "modifier", None) is None
            and not getattr(de, "_uses_edge_schema", True)
            and "energy" in inner.model_output_type()
            and dp.get_dim_fparam() == 0
            and dp.get_dim_aparam() == 0
            and not (callable(self_built) and self_built())
        )
    except Exception:
        return False


def _eval_lower(dp, ext_coord, mapping, nlist, atype):
    """Energies (F,) and forces (F, N, 3) of one member from a prepared neighbour list."""
    import torch
    from deepmd.pt.utils.env import DEVICE, GLOBAL_PT_FLOAT_PRECISION

    inner = dp.deep_eval.dp.model["Default"]
    nf, nall, _ = ext_coord.shape
    nat = nlist.shape[1]
    ec = torch.from_numpy(np.ascontiguousarray(ext_coord)).to(DEVICE, GLOBAL_PT_FLOAT_PRECISION)
    ea = torch.from_numpy(np.asarray(atype)[mapping].astype(np.int64)).to(DEVICE).expand(nf, nall)
    mp = torch.from_numpy(mapping.astype(np.int64)).to(DEVICE)
    nl = torch.from_numpy(nlist).to(DEVICE)
    out = inner.forward_common_lower(ec, ea.contiguous(), nl, mp.expand(nf, nall).contiguous())
    energy = out["energy_redu"].reshape(nf).detach()
    f_ext = out["energy_derv_r"].reshape(nf, nall, 3).detach()
    force = torch.zeros((nf, nat, 3), dtype=f_ext.dtype, device=f_ext.device)
    force.index_add_(1, mp, f_ext)
    return energy.cpu().numpy(), force.cpu().numpy()


def _eval_lower_chunked(dp, ext_coord, mapping, nlist, atype):
    """``_eval_lower`` over slices of the frames, at most _CPU_ATOMS_PER_CALL atoms each on CPU."""
    from deepmd.pt.utils.env import DEVICE

    nf, nat = nlist.shape[:2]
    step = nf if DEVICE.type != "cpu" else max(1, _CPU_ATOMS_PER_CALL // max(1, nat))
    parts = [
        _eval_lower(dp, ext_coord[s : s + step], mapping, nlist[s : s + step], atype)
        for s in range(0, nf, step)
    ]
    return np.concatenate([e for e, _ in parts]), np.concatenate([f for _, f in parts])


@contextlib.contextmanager
def _plain_interpreter():
    """On CPU, run TorchScript without the profiling executor's warm-up (restored on
    exit). On a GPU the optimised graph may fuse kernels: it is left on there."""
    import torch
    from deepmd.pt.utils.env import DEVICE

    if DEVICE.type != "cpu":
        yield
        return
    with torch.jit.optimized_execution(False):
        yield


def predict_ensemble(model_paths, frames, batch_size: int = 64, reference: bool = False, features: bool = False):
    """Energies (M, F) and forces list of F arrays (M, N_f, 3), evaluated in batches.

    What ``remote_al.ensemble.predict_ensemble`` runs (see the module docstring).
    ``model_paths``: frozen model files, or already loaded ``DeepPot`` objects.
    Frames with the same species sequence are stacked, ``batch_size`` per model call;
    their neighbour list is built once and shared by the members. ``reference=True``:
    every member through ``DeepPot.eval`` with the default TorchScript executor (the
    baseline this path is checked and measured against). ``features=True``: also the
    per-frame descriptor features of the first member (``remote_al.features``), from the
    chunk and neighbour list this evaluation builds anyway, as a third value (F, ntypes * D).
    """
    from deepmd.infer import DeepPot

    from remote_al.torch_env import single_thread_torch

    single_thread_torch()
    batch_size = max(1, int(batch_size))
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(frames):
        groups.setdefault(tuple(a.get_chemical_symbols()), []).append(i)
    m = len(model_paths)
    energies = np.zeros((m, len(frames)))
    forces: list = [None] * len(frames)
    feats: list = [None] * len(frames)
    with contextlib.nullcontext() if reference else _plain_interpreter():
        dps = [DeepPot(p) if isinstance(p, (str, Path)) else p for p in model_paths]
        lower = [not reference and _lower_ok(dp) for dp in dps]
        for symbols, idx in groups.items():
            atypes = []
            for path, dp in zip(model_paths, dps):
                type_map = dp.get_type_map()
                missing = sorted(set(symbols) - set(type_map))
                if missing:
                    raise ValueError(f"model {path} has no type for elements {missing}")
                atypes.append(np.array([type_map.index(s) for s in symbols]))
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                coords = np.array([frames[i].get_positions() for i in chunk])
                cells = np.array([np.asarray(frames[i].get_cell()) for i in chunk])
                periodic = all(bool(np.all(frames[i].pbc)) for i in chunk)
                nbr: dict[float, tuple | None] = {}  # shared by members with the same cutoff
                for k, dp in enumerate(dps):
                    res = None
                    if lower[k] and periodic:
                        rcut = float(dp.get_rcut())
                        if rcut not in nbr:
                            nbr[rcut] = neighbor_data(coords, cells, rcut)
                        if nbr[rcut] is not None:
                            res = _eval_lower_chunked(dp, *nbr[rcut], atypes[k])
                    if res is None:  # DeePMD-kit's own evaluation of the chunk
                        e, f, _ = dp.eval(
                            coords.reshape(len(chunk), -1), cells.reshape(len(chunk), -1), atypes[k]
                        )
                        res = (np.asarray(e), np.asarray(f))
                    e = res[0].reshape(len(chunk))
                    f = res[1].reshape(len(chunk), len(symbols), 3)
                    for j, i in enumerate(chunk):
                        energies[k, i] = e[j]
                        if forces[i] is None:
                            forces[i] = np.zeros((m, len(symbols), 3))
                        forces[i][k] = f[j]
                    if features and k == 0:
                        x = _chunk_features(dp, nbr.get(float(dp.get_rcut())) if lower[0] and periodic else None,
                                            coords, cells, atypes[0])
                        for j, i in enumerate(chunk):
                            feats[i] = x[j]
    return (energies, forces, np.array(feats)) if features else (energies, forces)


def _chunk_features(dp, nbr, coords, cells, atype) -> np.ndarray:
    """Per-frame descriptor features of one chunk from one member: through the neighbour list
    the evaluation built (``nbr``), else DeePMD-kit's own ``eval_descriptor``."""
    from remote_al.features import embedding_from_lower, frame_descriptor_features

    if nbr is not None:
        desc, _ = embedding_from_lower(dp, *nbr, atype)
    else:
        desc = dp.eval_descriptor(coords.reshape(len(coords), -1), cells.reshape(len(coords), -1), atype)
    return frame_descriptor_features(desc, atype, len(dp.get_type_map()))


def ensemble_features(model_paths, frames, batch_size: int = 64) -> np.ndarray:
    """(F, ntypes * D) descriptor features of ``frames`` from the first member alone, chunked
    and with the neighbour lists as ``fast_uq.predict_ensemble`` builds them (for benchmarks
    and for checking the per-chunk call against DeePMD-kit's own ``eval_descriptor``; a
    campaign gets them from its UQ evaluation, ``predict_ensemble(..., features=True)``)."""
    from deepmd.infer import DeepPot

    dp = DeepPot(model_paths[0]) if not hasattr(model_paths[0], "deep_eval") else model_paths[0]
    type_map = dp.get_type_map()
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(frames):
        groups.setdefault(tuple(a.get_chemical_symbols()), []).append(i)
    out: list = [None] * len(frames)
    with _plain_interpreter():
        for symbols, idx in groups.items():
            atype = np.array([type_map.index(s) for s in symbols])
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                coords = np.array([frames[i].get_positions() for i in chunk])
                cells = np.array([np.asarray(frames[i].get_cell()) for i in chunk])
                feats = _chunk_features(dp, neighbor_data(coords, cells, float(dp.get_rcut())), coords, cells, atype)
                for j, i in enumerate(chunk):
                    out[i] = feats[j]
    return np.array(out)
