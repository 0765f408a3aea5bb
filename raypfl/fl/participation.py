"""Who trains: a population of N clients of which K (`clients.concurrency`) train at a time (design principle 7).

Synchronous methods draw the K clients of each round without replacement (FedAvg's C·N, Flower's
`fraction_fit`); asynchronous methods keep K clients in flight and give each aggregated client's slot to a
client drawn from the idle population (FedBuff's concurrency). Reference clients (FedGMR's window trigger)
always take part. Every draw is a pure function of (seed, round) and of which clients are busy, so a run's
history does not depend on anything physical.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

_STREAM = 23  # the random stream of participation draws, apart from data order and bandwidth noise
Online = Callable[[int], bool]


class Participation:
    def __init__(self, num_clients: int, concurrency: int | None, seed: int, always: Sequence[int] = ()) -> None:
        self.num_clients = num_clients
        self.concurrency = num_clients if concurrency is None else min(concurrency, num_clients)
        self.seed = seed
        self.always = sorted(set(always))
        if len(self.always) > self.concurrency:
            raise ValueError(f"{len(self.always)} reference clients cannot train at once with a concurrency of "
                             f"{self.concurrency}")

    @property
    def everyone(self) -> bool:
        return self.concurrency == self.num_clients

    def initial(self, online: Online | None = None) -> list[int]:
        """The first clients to train (a round's sample, or the first K in flight)."""
        return self.draw(0, self.concurrency, busy=(), online=online)

    def round_sample(self, round_: int, count: int | None = None, online: Online | None = None) -> list[int]:
        """Synchronous methods: the clients of the round after aggregation `round_` (`count`: more than the
        concurrency, to over-select)."""
        return self.draw(round_, count or self.concurrency, busy=(), online=online)

    def refill(self, round_: int, released: Collection[int], busy: Collection[int], online: Online | None = None,
               salt: int | None = None) -> list[int]:
        """Asynchronous methods: after aggregation `round_`, the clients that take the slots of `released`
        (just aggregated, now idle); `busy` are the clients still training, uploading or buffered. With `online`,
        only clients online now are chosen, and slots may stay empty; `salt` tells apart the draws of one round."""
        if self.everyone:
            return sorted(c for c in released if online is None or online(c))
        keep = [c for c in self.always if c in released and (online is None or online(c))]
        drawn = self._sample(round_, len(released) - len(keep), {*busy, *keep, *self.always}, online, salt)
        return sorted([*keep, *drawn])

    def draw(self, round_: int, count: int, busy: Collection[int], online: Online | None = None,
             salt: int | None = None) -> list[int]:
        if self.everyone:
            return [c for c in range(self.num_clients) if c not in busy and (online is None or online(c))]
        chosen = [c for c in self.always if c not in busy and (online is None or online(c))]
        taken = {*busy, *self.always}
        return sorted([*chosen, *self._sample(round_, count - len(chosen), taken, online, salt)])

    def _sample(self, round_: int, count: int, taken: set[int], online: Online | None = None,
                salt: int | None = None) -> list[int]:
        """`count` distinct clients outside `taken` (and online, with `online`), uniformly, from the stream of
        (seed, round[, salt]); fewer when not enough are online."""
        free = self.num_clients - len(taken)
        count = min(count, free)
        if count <= 0:
            return []
        rng = np.random.default_rng([self.seed, _STREAM, round_, *(() if salt is None else (salt,))])
        if len(taken) <= self.num_clients // 2:  # rejection sampling: O(count) while most clients are free
            out: list[int] = []
            seen = set(taken)
            budget = 4 * count + 1000 if online is not None else None  # offline candidates cost draws too
            while len(out) < count and (budget is None or budget > 0):
                for c in rng.integers(0, self.num_clients, size=2 * (count - len(out))).tolist():
                    if budget is not None:
                        budget -= 1
                    if c not in seen:
                        seen.add(c)
                        if online is not None and not online(c):
                            continue
                        out.append(c)
                        if len(out) == count:
                            break
            return out
        pool = np.setdiff1d(np.arange(self.num_clients), np.fromiter(taken, dtype=np.int64, count=len(taken)))
        if online is not None:
            pool = pool[[online(int(c)) for c in pool]]
        return rng.choice(pool, size=min(count, len(pool)), replace=False).tolist()
