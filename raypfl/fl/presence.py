"""Who is online, as the server sees it (design principle 11): the availability model of `raypfl.sim.availability`
put to the server's questions, and the online share of each class, from a fixed sample of its clients."""

from __future__ import annotations

import numpy as np

from raypfl.config import ClientsConfig
from raypfl.sim.availability import INF, make_availability
from raypfl.sim.heterogeneity import ClientClasses

SAMPLE_PER_CLASS = 200  # clients per class whose state gives the class's online share (all of a smaller class)


class Presence:
    def __init__(self, cfg: ClientsConfig, classes: ClientClasses, seed: int) -> None:
        self.model = make_availability(cfg.availability, [k.name for k in classes.kinds], classes.index, seed)
        self.always = bool(getattr(self.model, "always", False))
        self.classes = classes
        self.retry_s = cfg.availability.retry_s
        self._sample = {}
        for k, klass in enumerate(classes.kinds):
            members = np.flatnonzero(classes.index == k)
            step = max(1, len(members) // SAMPLE_PER_CLASS)
            self._sample[klass.name] = members[::step][:SAMPLE_PER_CLASS].tolist()

    def online(self, client: int, t: float) -> bool:
        return self.always or self.model.online(client, t)

    def offline_at(self, client: int, t: float) -> float:
        """When a client online at `t` goes offline (inf: never)."""
        return INF if self.always else self.model.next_change(client, t)

    def back_at(self, client: int, t: float) -> float:
        """When a client offline at `t` comes back (inf: never)."""
        return self.model.next_change(client, t)

    def online_share(self, t: float) -> dict[str, float]:
        return {name: sum(self.model.online(c, t) for c in members) / len(members)
                for name, members in self._sample.items() if members}
