"""Server aggregation rules over masked client updates (spec B.4, H.2, H.4).

Per floating-point key, with m_i the client's explicit mask (all ones where absent) and λ_i its weight:

* ``ma``     mask-aware: W = Σ λ_i m_i w_i ⊘ Σ λ_i m_i; coordinates nobody holds keep W_old.
* ``ma_mix`` W = mix · W_ma + (1 − mix) · W_old.
* ``fa``     zero-filled FedAvg: W = Σ λ_i m_i w_i / Σ λ_i (pruned entries count as 0).
* ``ga``     update averaging: W = W_old + η Σ λ_i m_i (w_i − W_old) / Σ λ_i, η = server_lr.
* ``delta``  FedBuff: the updates are the clients' own deltas Δ_i = w_i − W_{v_i} (against the model each trained
             from, computed by the client): W = W_old + η Σ λ_i m_i Δ_i / Σ λ_i.

A masked tensor of an update may come dense (its shape; entries outside the mask are never read) or compact:
the held values only, in the mask's C order (`compact`), so an upload costs memory ∝ its density.

Sums run in float32, in place and in client-id order, so the result does not depend on the order the updates
were passed in; `Aggregation` takes them one at a time, in that order, so that a server need not hold a whole
buffer of uploads at once. Non-float tensors (e.g. BatchNorm's ``num_batches_tracked``) keep their old value.
NumPy only: the aggregator's process needs no PyTorch.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from raypfl.fl.jobs import Mask, Weights

Rule = Literal["ma", "ma_mix", "fa", "ga", "delta"]


@dataclass(frozen=True)
class ClientUpdate:
    client: int
    weights: Weights
    mask: Mask | None  # None, or a key absent from it: the client holds the whole tensor
    weight: float  # λ_i = staleness coefficient × n_samples, > 0


def compact(weights: Weights, mask: Mask | None) -> Weights:
    """The held values of every masked tensor (1-D, in the mask's C order); other tensors unchanged.

    Gathered by position: NumPy's boolean indexing branches on every element, which is several times slower at
    middling densities. Not through `flat_index`'s cache: a client actor compacts each job's upload under a mask
    object of its own, which the cache would pin."""
    mask = mask or {}
    return {k: np.take(w.reshape(-1), np.flatnonzero(mask[k])) if k in mask and w.shape == mask[k].shape else w
            for k, w in weights.items()}


def expand(weights: Weights, mask: Mask | None, like: Weights) -> Weights:
    """Dense tensors shaped like `like`, zero outside the mask (the inverse of `compact`)."""
    out = {}
    for key, ref in like.items():
        w = weights[key]
        if mask is not None and key in mask and w.shape != ref.shape:
            dense = np.zeros_like(ref)
            np.put(dense, flat_index(mask[key]), w)  # by position, as in `compact`
            out[key] = dense
        else:
            out[key] = np.asarray(w)
    return out


_INDEX_CACHE: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_INDEX_LOCK = threading.Lock()  # the aggregation's threads share the cache


def flat_index(held: np.ndarray) -> np.ndarray:
    """The flat positions a bool mask holds; cached, since a mask object serves many updates."""
    key = id(held)
    with _INDEX_LOCK:
        hit = _INDEX_CACHE.get(key)
        if hit is not None and hit[0] is held:
            _INDEX_CACHE.move_to_end(key)
            return hit[1]
        index = np.flatnonzero(held)
        _INDEX_CACHE[key] = (held, index)  # the array is kept, so its id cannot be reused while cached
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.popitem(last=False)
        return index


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
        _validate_update(old, u)


def _validate_update(old: Weights, u: ClientUpdate) -> None:
    who = f"client {u.client}"
    if not (math.isfinite(u.weight) and u.weight > 0):
        raise ValueError(f"{who}: aggregation weight must be finite and > 0, got {u.weight}")
    if u.weights.keys() != old.keys():
        diff = sorted(u.weights.keys() ^ old.keys())
        raise ValueError(f"{who}: state-dict keys differ from the global model's: {diff}")
    _check_mask(old, u.mask, who)
    for key, w in u.weights.items():
        if w.shape == old[key].shape:
            continue
        m = (u.mask or {}).get(key)
        held = None if m is None else len(flat_index(m))
        if w.shape != (held,):
            raise ValueError(f"{who}: {key!r} has shape {w.shape}, expected {old[key].shape}"
                             + (f" or the {held} held values" if held is not None else ""))


class _Sums:
    """Σ λ m w (or Σ λ m (w − W_old) for `ga`) and Σ λ m over the flat span [lo, hi) of one tensor, accumulated in
    place. Dense updates share one denominator, a scalar, until some update holds only part of the tensor."""

    def __init__(self, base: np.ndarray, lo: int, hi: int, deltas: bool) -> None:
        self.lo, self.hi = lo, hi
        self.base = base.reshape(-1)[lo:hi]
        self.deltas = deltas
        self.num: np.ndarray | None = None  # allocated by the first update
        self._scratch: np.ndarray | None = None
        self.den: np.ndarray | None = None  # per element, once some update holds only part of the tensor
        self.den_all = 0.0  # the part of Σ λ m that every element shares

    def add(self, weight: float, values: np.ndarray, held: np.ndarray | None, dense: bool) -> None:
        """`values`: the whole tensor's (flat) when `dense`, else the mask's held values (compact)."""
        if held is None:
            self._add_dense(weight, values[self.lo:self.hi])
            return
        if self.num is None:
            self.num = np.zeros_like(self.base)
        flat = flat_index(held)
        first, last = np.searchsorted(flat, (self.lo, self.hi))
        positions = flat[first:last] - self.lo
        values = values[self.lo:self.hi][positions] if dense else values[first:last]
        if self.deltas:
            values = values - self.base[positions]
        self.num[positions] += values * np.float32(weight)
        if self.den is None:
            self.den = np.zeros_like(self.base)
        self.den[positions] += np.float32(weight)

    def _add_dense(self, weight: float, values: np.ndarray) -> None:
        """num += λ · values (or λ · (values − base)), each product rounded to float32 before the sum, as
        `num + values * λ` rounds it; the first update starts from 0 + product (which turns -0 into +0)."""
        first = self.num is None
        if first:
            self.num = np.empty_like(self.base)
        out = self.num if first else self.scratch
        if self.deltas:
            np.subtract(values, self.base, out=out)
            np.multiply(out, weight, out=out)
        else:
            np.multiply(values, weight, out=out)
        if first:
            np.add(out, np.float32(0.0), out=out)
        else:
            np.add(self.num, out, out=self.num)
        self.den_all += weight

    @property
    def scratch(self) -> np.ndarray:
        if self._scratch is None:
            self._scratch = np.empty_like(self.base)
        return self._scratch

    def ratio(self, out: np.ndarray) -> None:
        """out = num ⊘ den where den > 0, else base (mask-aware averaging)."""
        assert self.num is not None
        if self.den is None:  # every element shares the denominator Σ λ > 0
            np.divide(self.num, np.float32(self.den_all), out=out)
            return
        den = self.den + np.float32(self.den_all)
        out[:] = self.base
        np.divide(self.num, den, out=out, where=den > 0)


# Large tensors are aggregated in spans of at least this many elements, on up to `_THREADS` threads (NumPy releases
# the GIL in its loops). Every element's sum runs over the same updates in the same order whatever the spans: the
# result does not depend on them.
_SPAN = 1 << 20
_THREADS = min(4, os.cpu_count() or 1)
_POOL: ThreadPoolExecutor | None = None


def _spans(size: int) -> list[tuple[int, int]]:
    parts = max(1, min(_THREADS, size // _SPAN))
    bounds = [size * k // parts for k in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def _run(tasks: list[Callable[[], None]]) -> None:
    global _POOL
    if _THREADS == 1 or len(tasks) == 1:
        for task in tasks:
            task()
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="aggregate")
    for future in [_POOL.submit(task) for task in tasks]:
        future.result()


def aggregate(rule: Rule, old: Weights, updates: Sequence[ClientUpdate], *, mix: float = 1.0,
              server_lr: float = 1.0) -> Weights:
    """The new global model from `old` and the client updates; new arrays with the dtypes of `old`."""
    running = Aggregation(rule, old, server_lr=server_lr)
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    _validate(old, updates)
    for update in sorted(updates, key=lambda u: u.client):
        running.add_valid(update)
    return running.result(mix=mix)


class Aggregation:
    """`aggregate` one update at a time, so that an update's arrays can be let go once added: fed in increasing
    client id it gives the same floats as `aggregate` given them all at once (the sums run in that order)."""

    def __init__(self, rule: Rule, old: Weights, *, server_lr: float = 1.0) -> None:
        if rule not in get_args(Rule):
            raise ValueError(f"unknown aggregation rule {rule!r}; expected one of {get_args(Rule)}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.rule, self.old, self.server_lr = rule, old, server_lr
        self._weights: list[float] = []
        self._last_client: int | None = None
        self._sums = {key: [_Sums(np.asarray(w, dtype=np.float32), lo, hi, deltas=rule == "ga")
                            for lo, hi in _spans(w.size)]
                      for key, w in old.items() if np.issubdtype(w.dtype, np.floating)}

    def add(self, update: ClientUpdate) -> None:
        if self._last_client is not None and update.client <= self._last_client:
            raise ValueError(f"updates must come in increasing client id: {update.client} after {self._last_client}"
                             + (" (more than one update per client)" if update.client == self._last_client else ""))
        _validate_update(self.old, update)
        self.add_valid(update)

    def add_valid(self, update: ClientUpdate) -> None:
        """`add` for an update already validated against `old` (`aggregate` checks them all first)."""
        self._last_client = update.client
        self._weights.append(update.weight)
        masks = update.mask or {}

        def span(key: str, sums: _Sums) -> None:
            values = np.asarray(update.weights[key], dtype=np.float32)
            sums.add(update.weight, values.reshape(-1), masks.get(key), values.shape == self.old[key].shape)

        _run([functools.partial(span, key, sums) for key, spans in self._sums.items() for sums in spans])

    def result(self, *, mix: float = 1.0) -> Weights:
        """The new global model (`mix`: the share of the averaged model under `ma_mix`)."""
        if not self._weights:
            raise ValueError("nothing to aggregate: no client updates")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        total = math.fsum(self._weights)
        new: Weights = {key: w.copy() for key, w in self.old.items() if key not in self._sums}

        def finish(sums: _Sums, target: np.ndarray) -> None:
            assert sums.num is not None
            if self.rule == "fa":
                np.divide(sums.num, np.float32(total), out=target)
            elif self.rule in ("ga", "delta"):  # base + num · (η / Σλ), the product rounded first
                np.multiply(sums.num, np.float32(self.server_lr / total), out=target)
                np.add(sums.base, target, out=target)
            else:
                sums.ratio(target)
                if self.rule == "ma_mix":  # mix · W̃ + (1 − mix) · base, each product rounded first
                    np.multiply(target, np.float32(mix), out=target)
                    np.multiply(sums.base, np.float32(1.0 - mix), out=sums.scratch)
                    np.add(target, sums.scratch, out=target)

        tasks: list[Callable[[], None]] = []
        for key, spans in self._sums.items():
            new[key] = out = np.empty(self.old[key].shape, dtype=np.float32)
            tasks += [functools.partial(finish, sums, out.reshape(-1)[sums.lo:sums.hi]) for sums in spans]
        _run(tasks)
        return {key: new[key].astype(w.dtype, copy=False) for key, w in self.old.items()}


def apply_mask(weights: Weights, mask: Mask | None) -> Weights:
    """`weights` with every entry outside `mask` set to 0; keys absent from the mask are copied unchanged."""
    _check_mask(weights, mask, "apply_mask")
    mask = mask or {}
    return {k: np.where(mask[k], w, 0).astype(w.dtype) if k in mask else w.copy() for k, w in weights.items()}
