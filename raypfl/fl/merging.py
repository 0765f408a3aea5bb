"""A flush's uploads into the new global model (spec B.3, B.4, H.3): each upload's accounting, the staleness
weights and the aggregation rule.

The window scope adds each upload to a running sum as the trainer hands it over, in client-id order (the order
`aggregate` sums in, so the floats are the same), and lets it go: the server holds one upload at a time, not the
buffer (FedBuff's buffer of 100 `cnn` uploads is 2.6 GB). The cache scope (PR-FL) and the cache model keep every
client's latest upload anyway, and aggregate them at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from raypfl.config import AlgorithmConfig
from raypfl.fl.aggregation import Aggregation, ClientUpdate, aggregate, expand
from raypfl.fl.jobs import Mask, TrainResult, Weights
from raypfl.fl.staleness import Staleness, StalenessLedger, coefficients, mixing_share, weigh
from raypfl.fl.state import CachedUpdate, ServerState
from raypfl.fl.submodels import SubModels, WidthSubModels


def merge(st: ServerState, buffer: list[int], results: Iterable[TrainResult], *, alg: AlgorithmConfig,
          staleness: Staleness, ledger: StalenessLedger, submodels: SubModels | WidthSubModels,
          keep_uploads: bool) -> Weights:
    """The new global model from the uploads of `buffer` (client ids in increasing order; `results` yields theirs
    in that order). `keep_uploads`: every client's latest upload is kept in `st.cache` (the cache model)."""
    if keep_uploads or alg.scope == "cache":
        arrived = {r.client: CachedUpdate(r.version, r.weights, _account(st, submodels, r), r.n_samples)
                   for r in results}
        _close_window(st, len(arrived))
        if keep_uploads:
            st.cache.update(arrived)
        scope = st.cache if alg.scope == "cache" else arrived
        updates, mix = weigh(scope, sorted(arrived), st.round, staleness, ledger, alg.mixing)
        return aggregate(alg.rule, st.weights, updates, mix=mix, server_lr=alg.server_lr)
    versions = {c: int(st.clients.version[c]) for c in buffer}
    coeff, factors = coefficients(versions, st.round, staleness, ledger)
    running = Aggregation(alg.rule, st.weights, server_lr=alg.server_lr)
    samples: dict[int, int] = {}
    for r in results:
        if r.version != versions[r.client]:
            raise RuntimeError(f"client {r.client}'s upload trained on version {r.version}, its job on "
                               f"{versions[r.client]}")
        mask = _account(st, submodels, r)
        samples[r.client] = r.n_samples
        running.add(ClientUpdate(r.client, r.weights, mask, coeff[r.client] * r.n_samples))
    _close_window(st, len(samples))
    return running.result(mix=mixing_share(coeff, factors, samples, alg.mixing))


def job_mask(st: ServerState, submodels: SubModels | WidthSubModels, client: int) -> Mask | None:
    """The mask of the job a client has just finished: the server's own object (results do not carry it back,
    and every update under one mask shares its cached positions in the aggregation)."""
    cl = st.clients
    return submodels.mask(int(cl.mask_generation[client]), float(cl.job_density[client]))


def _account(st: ServerState, submodels: SubModels | WidthSubModels, r: TrainResult) -> Mask | None:
    """Count the upload (updates, missed rounds, the client's score, PR-FL's squared gradients); its job's mask."""
    cl = st.clients
    mask = job_mask(st, submodels, r.client)
    missed = st.round - r.version
    cl.updates[r.client] += 1
    cl.missed_total[r.client] += missed
    st.window.missed += missed
    if cl.scoring[r.client]:
        cl.scoring[r.client] = False
        cl.score[r.client] = float("nan") if r.score is None else r.score
    if r.grads is not None and submodels.grads is not None:
        submodels.grads.add(expand(r.grads, mask, {k: st.weights[k] for k in r.grads}))
    return mask


def _close_window(st: ServerState, uploads: int) -> None:
    st.updates += uploads
    st.window.updates += uploads
    st.window.flushes += 1
