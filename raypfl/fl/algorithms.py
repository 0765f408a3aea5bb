"""Named algorithm presets: each one is a complete set of `algorithm.*` config values.

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
    Arrivals collect in a buffer; when it holds K = `buffer_size` updates the server applies their
    staleness-weighted mean update with a server learning rate η = `server_lr`:
    W ← W + η Σ λ_i (w_i − W) / Σ λ_i, with s(m) = (m + 1)^−1/2.
"""

from __future__ import annotations

import copy
from typing import Any

_COMMON: dict[str, Any] = {
    "buffer_size": 1,
    "reference_clients": [0],
    "grace_s": 0.5,
    "server_time_s": 0.5,
    "mixing": None,
    "server_lr": 1.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "fedavg": {**_COMMON, "trigger": "synchronous", "rule": "fa",
               "staleness": {"kind": "constant", "a": 0.6, "b": 2}},
    "fedasync": {**_COMMON, "trigger": "every_arrival", "rule": "ma_mix", "mixing": 0.6,
                 "staleness": {"kind": "poly", "a": 0.6, "b": 2}},
    "fedbuff": {**_COMMON, "trigger": "count", "buffer_size": 3, "rule": "ga",
                "staleness": {"kind": "poly", "a": 0.5, "b": 2}},
}


def preset(name: str) -> dict[str, Any]:
    """The preset's `algorithm.*` values; ValueError for an algorithm this release does not ship."""
    if name not in PRESETS:
        raise ValueError(f"algorithm '{name}' is not available in this release (available: {', '.join(PRESETS)})")
    return copy.deepcopy({"name": name, **PRESETS[name]})
