"""Who trains: a population of N clients of which K (`clients.concurrency`) train at a time (design principle 7).

Synchronous methods draw the K clients of each round without replacement (FedAvg's C·N, Flower's
`fraction_fit`); asynchronous methods keep K clients in flight and give each aggregated client's slot to a
client drawn from the idle population (FedBuff's concurrency). Reference clients (FedGMR's window trigger)
always take part. Every draw is a pure function of (seed, round) and of which clients are busy, so a run's
history does not depend on anything physical.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

_STREAM = 23  # the random stream of participation draws, apart from data order and bandwidth noise


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

    def initial(self) -> list[int]:
        """The first clients to train (a round's sample, or the first K in flight)."""
        return self.draw(0, self.concurrency, busy=())

    def round_sample(self, round_: int) -> list[int]:
        """Synchronous methods: the clients of the round after aggregation `round_`."""
        return self.draw(round_, self.concurrency, busy=())

    def refill(self, round_: int, released: Collection[int], busy: Collection[int]) -> list[int]:
        """Asynchronous methods: after aggregation `round_`, the clients that take the slots of `released`
        (just aggregated, now idle); `busy` are the clients still training, uploading or buffered."""
        if self.everyone:
            return sorted(released)
        keep = [c for c in self.always if c in released]
        drawn = self._sample(round_, len(released) - len(keep), taken={*busy, *keep, *self.always})
        return sorted([*keep, *drawn])

    def draw(self, round_: int, count: int, busy: Collection[int]) -> list[int]:
        if self.everyone:
            return list(range(self.num_clients))
        chosen = [c for c in self.always if c not in busy]
        return sorted([*chosen, *self._sample(round_, count - len(chosen), taken={*busy, *chosen})])

    def _sample(self, round_: int, count: int, taken: set[int]) -> list[int]:
        """`count` distinct clients outside `taken`, uniformly, from the stream of (seed, round)."""
        free = self.num_clients - len(taken)
        count = min(count, free)
        if count <= 0:
            return []
        rng = np.random.default_rng([self.seed, _STREAM, round_])
        if len(taken) <= self.num_clients // 2:  # rejection sampling: O(count) while most clients are free
            out: list[int] = []
            seen = set(taken)
            while len(out) < count:
                for c in rng.integers(0, self.num_clients, size=2 * (count - len(out))).tolist():
                    if c not in seen:
                        seen.add(c)
                        out.append(c)
                        if len(out) == count:
                            break
            return out
        pool = np.setdiff1d(np.arange(self.num_clients), np.fromiter(taken, dtype=np.int64, count=len(taken)))
        return rng.choice(pool, size=count, replace=False).tolist()
