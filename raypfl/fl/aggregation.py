"""Server aggregation rules over masked client updates (spec B.4, H.2, H.4).

Per floating-point key, with m_i the client's explicit mask (all ones where absent) and λ_i its weight:

* ``ma``     mask-aware: W = Σ λ_i m_i w_i ⊘ Σ λ_i m_i; coordinates nobody holds keep W_old.
* ``ma_mix`` W = mix · W_ma + (1 − mix) · W_old.
* ``fa``     zero-filled FedAvg: W = Σ λ_i m_i w_i / Σ λ_i (pruned entries count as 0).
* ``ga``     update averaging: W = W_old + η Σ λ_i m_i (w_i − W_old) / Σ λ_i, η = server_lr.

Non-float tensors (e.g. BatchNorm's ``num_batches_tracked``) keep their old value. Sums run in float64 in
client-id order, so the result does not depend on the order the updates were passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from raypfl.fl.jobs import Mask, Weights

Rule = Literal["ma", "ma_mix", "fa", "ga"]


@dataclass(frozen=True)
class ClientUpdate:
    client: int
    weights: Weights
    mask: Mask | None  # None, or a key absent from it: the client holds the whole tensor
    weight: float  # λ_i = staleness coefficient × n_samples, > 0


def _check_mask(weights: Weights, mask: Mask | None, who: str) -> None:
    for key, m in (mask or {}).items():
        if key not in weights:
            raise ValueError(f"{who}: mask key {key!r} is not in the model")
        if m.dtype != np.bool_ or m.shape != weights[key].shape:
            raise ValueError(f"{who}: mask {key!r} must be a bool array of shape {weights[key].shape}, "
                             f"got {m.dtype} {m.shape}")


def _validate(old: Weights, updates: Sequence[ClientUpdate]) -> None:
    if not updates:
        raise ValueError("nothing to aggregate: no client updates")
    clients = [u.client for u in updates]
    if len(set(clients)) != len(clients):
        raise ValueError(f"more than one update per client: {sorted(clients)}")
    for u in updates:
        who = f"client {u.client}"
        if not (math.isfinite(u.weight) and u.weight > 0):
            raise ValueError(f"{who}: aggregation weight must be finite and > 0, got {u.weight}")
        if u.weights.keys() != old.keys():
            diff = sorted(u.weights.keys() ^ old.keys())
            raise ValueError(f"{who}: state-dict keys differ from the global model's: {diff}")
        for key, w in u.weights.items():
            if w.shape != old[key].shape:
                raise ValueError(f"{who}: {key!r} has shape {w.shape}, expected {old[key].shape}")
        _check_mask(old, u.mask, who)


def aggregate(rule: Rule, old: Weights, updates: Sequence[ClientUpdate], *, mix: float = 1.0,
              server_lr: float = 1.0) -> Weights:
    """The new global model from `old` and the client updates; new arrays with the dtypes of `old`."""
    if rule not in get_args(Rule):
        raise ValueError(f"unknown aggregation rule {rule!r}; expected one of {get_args(Rule)}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    if not server_lr > 0:
        raise ValueError(f"server_lr must be > 0, got {server_lr}")
    _validate(old, updates)
    ordered = sorted(updates, key=lambda u: u.client)
    total = math.fsum(u.weight for u in ordered)

    new: Weights = {}
    for key, w_old in old.items():
        if not np.issubdtype(w_old.dtype, np.floating):
            new[key] = w_old.copy()
            continue
        base = w_old.astype(np.float64)
        num = np.zeros_like(base)  # Σ λ_i m_i w_i
        den = np.zeros_like(base)  # Σ λ_i m_i
        for u in ordered:
            held = (u.mask or {}).get(key, True)
            num += np.where(held, u.weight * u.weights[key].astype(np.float64), 0.0)
            den += np.where(held, u.weight, 0.0)
        if rule == "fa":
            out = num / total
        elif rule == "ga":
            out = base + server_lr * (num - den * base) / total
        else:
            out = np.divide(num, den, out=base.copy(), where=den > 0)
            if rule == "ma_mix":
                out = mix * out + (1.0 - mix) * base
        new[key] = out.astype(w_old.dtype)
    return new


def apply_mask(weights: Weights, mask: Mask | None) -> Weights:
    """`weights` with every entry outside `mask` set to 0; keys absent from the mask are copied unchanged."""
    _check_mask(weights, mask, "apply_mask")
    mask = mask or {}
    return {k: np.where(mask[k], w, 0).astype(w.dtype) if k in mask else w.copy() for k, w in weights.items()}
