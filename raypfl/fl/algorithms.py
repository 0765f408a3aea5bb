"""Named algorithm presets: each one is a complete set of `algorithm.*` config values, following its paper's rules
and defaults (design principle 10); raypfl's own improvements are named options (e.g. `recovery.trigger: budget`).

A preset is only a starting point: any key given in the config or with `--set algorithm.KEY=...` overrides it.
Notation: W the global model, w_i client i's upload, λ_i = c_i · n_i its weight (normalised staleness factor
× samples), s(m) the staleness factor of an update that missed m aggregations.

fedavg (McMahan et al., 2017)
    Synchronous rounds: every client trains on the same model, the server waits for the slowest one and
    replaces W by the sample-weighted average W ← Σ λ_i w_i / Σ λ_i. All clients hold the dense model.

fedasync (Xie et al., 2019)
    Every arrival is aggregated at once by staleness-weighted mixing, W ← (1 − α s(m)) W + α s(m) w_i,
    with α = `mixing` and s polynomial, s(m) = (m + 1)^−a. The client restarts from the new model.

fedbuff (Nguyen et al., 2022)
    Clients upload their update Δ_i = w_i − W_{v_i} against the model they trained from; when the buffer holds
    K = `buffer_size` (10) updates the server applies their staleness-weighted mean with a server learning rate
    η = `server_lr`: W ← W + η Σ λ_i Δ_i / Σ λ_i, with s(m) = (m + 1)^−1/2.

fedfix (PR-FL's baseline "FedFix")
    Dense models aggregated at fixed time windows: Δ = `grace_s` after a window opens, once two updates are in,
    by the mask-aware mixing of spec B.4-2 (α = the arrivals' share of the staleness weights).

fedgmr (FedGMR: gradual model restoration, spec D.1)
    Client i trains a nested unstructured sub-model of density d_i, starting at its bandwidth class
    (1.0 … 0.05); masks keep a 2 % per-layer floor of the largest |w|, then the globally best |w| / κ_l (κ_l the
    layer's per-weight cost). Uploads arriving by Δ s after the reference client form the buffer, merged by
    mask-aware averaging: W[k] ← Σ λ_i m_i[k] w_i[k] / Σ λ_i m_i[k] where someone holds k, else W[k] stays.
    Restoration is GMR with early stopping: at every evaluation a plateau of `patience` evaluations of the FedAvg
    of the latest uploads' accuracy (the global model's once every client is at density ≥ 0.99) raises the
    density floor one ladder step (0.05 → 0.1 → 0.2 → 0.5 → 1.0), the first plateau only arming the trigger, with
    a cool-down of `patience` evaluations after each step; a plateau of a client's own accuracy (scored after its
    local rounds 1, 26, 51, ...) raises that client one step, then 2·patience evaluations of cool-down. At
    density 1 the global patience becomes min(5·patience, 50). Sub-models go out as ascending-density increments
    (IMS): one full model per broadcast instead of one copy per distinct sub-model.
    `recovery.trigger: time` / `mixed` add the papers' fixed-time schedule (floors 0.1 / 0.2 / 0.5 / 1.0 at 20 /
    40 / 60 / 80 % of `time_total_s`, the papers' 70,000 s, or 220,000 s on CIFAR-10); `budget` is raypfl's
    schedule scaled to the run's budget, fed `min_checks` scores per budget, so that restoration completes at any
    budget.

prfl (PR-FL: pruning and recovery, spec D.2)
    The same sub-models and mask-aware averaging, but over a server cache of every client's latest upload with
    staleness recomputed at each aggregation, a fixed aggregation window that waits for two arrivals,
    squared-gradient importance, first-stage balancing of densities to equalise round times, additive recovery
    (d ← d + 0.2 on plateaus of 10 evaluations; the floor follows the clients up) and a rollback to the best model
    before each global step; end-stage patience 8·patience.

heterofl (Diao et al., 2021), fedrolex (Alam et al., 2022), fjord (Horváth et al., 2021)
    Width-sliced sub-models: client i trains a network keeping k = ⌈√d_i·C⌉ of the C channels of every hidden
    layer — the first k (HeteroFL), a window starting at round mod C and moved at every evaluation (FedRolex),
    or the first k with ordered dropout, each local step using the first ⌈√p·C⌉ channels for p cycling over
    the ladder values ≤ d_i (FjORD). Synchronous rounds; each coordinate is averaged over the clients that
    hold it (the `ma` rule on re-embedded tensors). Variants: `aux` runs them in FedGMR's asynchronous buffer
    with staleness weights and IMS, `aux_gmr` also restores widths gradually as FedGMR restores densities;
    `heterofl` + `masks` is HeteroFL as PR-FL's slides ran it: fixed class densities as nested unstructured masks.
"""

from __future__ import annotations

import copy
from typing import Any

_COMMON: dict[str, Any] = {
    "variant": "base",
    "buffer_size": 1,
    "min_arrivals": 2,
    "reference_clients": [0],
    "grace_s": 0.5,
    "server_time_s": 0.5,
    "refresh_every": None,
    "mixing": None,
    "server_lr": 1.0,
    "scope": "window",
    "ims": False,
    "pruning": {"enabled": False},
    "recovery": {"trigger": "none"},
    "width": {"kind": "none"},
}
_GMR_RECOVERY = {"trigger": "plateau", "client_trigger": True, "patience": 5, "step": "ladder",
                 "global_score": "cache_until_full", "end_stage_factor": 5, "end_stage_cap": 50,
                 "client_eval_first": True}
_PRFL_RECOVERY = {"trigger": "plateau", "client_trigger": True, "patience": 10, "step": "additive", "step_size": 0.2,
                  "rollback": True, "global_score": "global", "end_stage_factor": 8, "end_stage_cap": None,
                  "client_eval_first": True}

PRESETS: dict[str, dict[str, Any]] = {
    "fedavg": {**_COMMON, "trigger": "synchronous", "rule": "fa",
               "staleness": {"kind": "constant", "a": 0.6, "b": 2}},
    "fedasync": {**_COMMON, "trigger": "every_arrival", "rule": "ma_mix", "mixing": 0.6,
                 "staleness": {"kind": "poly", "a": 0.6, "b": 2}},
    "fedbuff": {**_COMMON, "trigger": "count", "buffer_size": 10, "rule": "delta",
                "staleness": {"kind": "poly", "a": 0.5, "b": 2}},
    "fedfix": {**_COMMON, "trigger": "fixed_window", "grace_s": 0.5, "min_arrivals": 2, "rule": "ma_mix",
               "staleness": {"kind": "poly", "a": 0.6, "b": 2}},
    "fedgmr": {**_COMMON, "trigger": "reference_window", "rule": "ma", "ims": True,
               "staleness": {"kind": "poly", "a": 0.6, "b": 2},
               "pruning": {"enabled": True, "importance": "magnitude_per_cost", "layer_floor": 0.02},
               "recovery": _GMR_RECOVERY},
    "prfl": {**_COMMON, "trigger": "fixed_window", "grace_s": 0.5, "min_arrivals": 2, "rule": "ma",
             "scope": "cache", "ims": True, "staleness": {"kind": "poly", "a": 0.6, "b": 2},
             "pruning": {"enabled": True, "importance": "grad_sq", "layer_floor": 0.05, "balance": True},
             "recovery": _PRFL_RECOVERY},
    **{name: {**_COMMON, "trigger": "synchronous", "rule": "ma", "staleness": {"kind": "constant", "a": 0.6, "b": 2},
              "width": {"kind": kind}}
       for name, kind in (("heterofl", "static"), ("fedrolex", "rolling"), ("fjord", "ordered"))},
}
WIDTH_METHODS = ("heterofl", "fedrolex", "fjord")
# raypfl's asynchronous machinery around a width-sliced method (spec F: X+Aux, X+Aux+GMR)
_AUX: dict[str, Any] = {key: PRESETS["fedgmr"][key] for key in ("trigger", "rule", "ims", "staleness")}
# HeteroFL as PR-FL's slides ran it (spec F, PR-FL mapping): the class densities as nested unstructured masks
_MASKS: dict[str, Any] = {"width": {"kind": "none"},
                          "pruning": {"enabled": True, "importance": "magnitude", "layer_floor": 0.02}}
VARIANT_CHANGES: dict[str, dict[str, Any]] = {"base": {}, "aux": _AUX, "aux_gmr": {**_AUX, "recovery": _GMR_RECOVERY},
                                              "masks": _MASKS}
VARIANTS_OF: dict[str, tuple[str, ...]] = {"aux": WIDTH_METHODS, "aux_gmr": WIDTH_METHODS, "masks": ("heterofl",)}


def preset(name: str, variant: str = "base") -> dict[str, Any]:
    """The preset's `algorithm.*` values; ValueError for an unknown algorithm or a variant it has not."""
    if name not in PRESETS:
        raise ValueError(f"algorithm '{name}' is not available in this release (available: {', '.join(PRESETS)})")
    if variant != "base" and name not in VARIANTS_OF[variant]:
        raise ValueError(f"algorithm.variant '{variant}' applies to {', '.join(VARIANTS_OF[variant])}, not to '{name}'")
    return copy.deepcopy({**PRESETS[name], **VARIANT_CHANGES[variant], "name": name, "variant": variant})
