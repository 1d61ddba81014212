"""The DeePMD-kit ``input.json`` of one ensemble member: defaults and deep-merged overrides.

Pure data, no DeePMD-kit import: the driver's preflight builds the same input to check
a campaign's ``[training.deepmd]`` overrides, and ``remote_al.training`` writes it.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

DEFAULT_SEL = {"O": 48}  # neighbours within rcut 5 A in layered oxides; others 24

# How a continued training (``--init-model``) sets its loss prefactors' start values:
# "limit": at the limit values, so the schedule does not start over from a force-heavy loss
# (DP-GEN's training_reuse_start_pref_*, here at the limits); "restart": the same schedule
# as a training from scratch.
CONTINUE_PREFACTORS = ("limit", "restart")


def default_save_freq(numb_steps: int) -> int:
    """Steps between checkpoints when the campaign does not set ``training.save_freq``:
    a tenth of the run, at most 1000 steps. A training killed and run again resumes from
    its latest checkpoint (``remote_al.train_resume``), so it loses at most a tenth of its
    steps, and at most 1000 of a long one (a minute or two of this small model on a GPU).
    A checkpoint of this model is under 1 MB and takes milliseconds to write; the member's
    folder keeps the newest two (``max_ckpt_keep``)."""
    return min(1000, max(1, int(numb_steps) // 10))


def deep_update(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def deepmd_input(
    type_map,
    train_systems,
    valid_systems,
    numb_steps: int,
    seed: int,
    overrides: Mapping[str, Any] | None = None,
    *,
    continued: bool = False,
    continue_prefactors: str = "limit",
    continue_overrides: Mapping[str, Any] | None = None,
    save_freq: int = 0,
) -> dict:
    """DeePMD-kit input.json for one member; ``overrides`` deep-update the defaults.

    A continued training (``continued``: it starts from the previous generation's
    checkpoint) restarts DeePMD-kit's learning-rate and prefactor schedules at step 0, so
    with the defaults its energy weight would fall back to ``start_pref_e``. With
    ``continue_prefactors="limit"`` every ``start_pref_X`` of the loss is set to its
    ``limit_pref_X`` (the weights the previous generation ended with); ``"restart"`` keeps
    the schedule. ``continue_overrides`` then deep-update the result (e.g. DP-GEN's
    ``{"loss": {"start_pref_e": 0.1, "start_pref_f": 100}, "learning_rate": {"start_lr": 1e-4}}``).
    ``save_freq``: steps between checkpoints; 0: ``default_save_freq(numb_steps)``; an
    override of ``training.save_freq`` wins.
    """
    sel = [DEFAULT_SEL.get(el, 24) for el in type_map]
    disp = max(1, numb_steps // 20)
    inp = {
        "model": {
            "type_map": list(type_map),
            "descriptor": {
                "type": "se_e2_a",
                "sel": sel,
                "rcut_smth": 0.5,
                "rcut": 5.0,
                "neuron": [8, 16, 32],
                "axis_neuron": 4,
                "resnet_dt": False,
                "seed": seed,
            },
            "fitting_net": {"neuron": [32, 32, 32], "resnet_dt": True, "seed": seed + 1},
        },
        "learning_rate": {
            "type": "exp",
            "decay_steps": max(1, numb_steps // 20),
            "start_lr": 1.0e-3,
            "stop_lr": 3.0e-5,
        },
        "loss": {
            "type": "ener",
            "start_pref_e": 0.02,
            "limit_pref_e": 1.0,
            "start_pref_f": 1000.0,
            "limit_pref_f": 1.0,
            "start_pref_v": 0.0,
            "limit_pref_v": 0.0,
        },
        "training": {
            "training_data": {"systems": list(train_systems), "batch_size": "auto"},
            "numb_steps": int(numb_steps),
            "seed": seed + 2,
            "disp_file": "lcurve.out",
            "disp_freq": disp,
            "save_freq": int(save_freq) if save_freq > 0 else default_save_freq(numb_steps),
            "save_ckpt": "model.ckpt",
            "max_ckpt_keep": 2,  # the latest, and the one before should it be torn
        },
    }
    if valid_systems:
        inp["training"]["validation_data"] = {
            "systems": list(valid_systems),
            "batch_size": "auto",
            "numb_btch": 1,
        }
    inp = deep_update(inp, overrides or {})
    if not continued:
        return inp
    if continue_prefactors not in CONTINUE_PREFACTORS:
        raise ValueError(f"continue_prefactors must be one of {CONTINUE_PREFACTORS}, got {continue_prefactors!r}")
    if continue_prefactors == "limit":
        loss = inp.get("loss", {})
        for key in list(loss):
            limit = "limit_pref_" + key[len("start_pref_"):]
            if key.startswith("start_pref_") and limit in loss:
                loss[key] = loss[limit]
    return deep_update(inp, continue_overrides or {})
