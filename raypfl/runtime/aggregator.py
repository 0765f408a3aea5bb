"""The aggregator actor: owns the Server (global model, virtual clock, buffer) and drives the client pool.

Its model versions live in the object store. At every evaluation the driver takes a snapshot and becomes the
owner of the versions it needs (`export_versions` → `adopt_versions`), so a snapshot holds no second copy of
them and they outlive this actor: a new aggregator continues from the snapshot if this one dies.
"""

from __future__ import annotations

from typing import Any

import ray

from raypfl.config import Config
from raypfl.fl.jobs import ModelSpec
from raypfl.fl.server import Server
from raypfl.runtime.dispatch import ActorPoolTrainer
from raypfl.sim.heterogeneity import ClientClasses


class AggregatorActor:
    def __init__(self, config: dict[str, Any], classes: ClientClasses,
                 model_ref: list[ray.ObjectRef], actors: list[Any], eligible: list[list[int]],
                 load: tuple[ModelSpec, list[ray.ObjectRef], list[ray.ObjectRef]], test_size: int,
                 snapshot: dict[str, Any] | None = None,
                 versions: dict[int, list[ray.ObjectRef]] | None = None) -> None:
        """`model_ref`: in a list (fetched here, so that this actor starts while a client actor still builds it),
        the initial model's `raypfl.fl.submodels.ModelDescription`. `load`: what a restarted client actor is
        loaded with again (the spec, and the dataset's object in a list), and the driver's first loads."""
        cfg = Config.model_validate(config)
        spec, (data,), loads = load
        # Calls from two callers to one actor are not ordered: a job sent before the driver's load has run would
        # find the actor empty. Waited for, not fetched: a load that failed is the dispatcher's to notice.
        ray.wait(loads, num_returns=len(loads))
        self.trainer = ActorPoolTrainer(actors, eligible, lambda client: int(classes.index[client]),
                                        cfg.training.eval_batch_size, test_size, cfg.runtime.queue_depth,
                                        reload=lambda actor: actor.load.remote(spec, data),
                                        max_restarts=cfg.runtime.max_restarts)
        model = ray.get(model_ref[0])
        self.server = Server(cfg, classes, model.weights, model.sizes, model.facts, self.trainer)
        self.trainer.context = lambda: {"virtual_time_s": self.server.state.now, "round": self.server.state.round}
        if snapshot is not None:
            self.adopt_versions(versions or {})
            self.server.restore(snapshot)

    def run_until_eval(self) -> dict[str, Any]:
        record = self.server.run_until_eval()
        return {"record": record.as_dict(), "done": self.server.done, "in_flight": self.server.in_flight()}

    def snapshot(self) -> dict[str, Any]:
        return self.server.snapshot()

    def export_versions(self, versions: list[int]) -> Any:
        """The weights of `versions`, one return value each (the caller owns the copies)."""
        values = ray.get([self.trainer.versions[v] for v in versions])
        return values[0] if len(values) == 1 else tuple(values)

    def adopt_versions(self, refs: dict[int, list[ray.ObjectRef]]) -> None:
        """Hold the caller's objects for these versions instead of this actor's own copies."""
        for version, (ref,) in refs.items():
            self.trainer.adopt(int(version), ref)

    def summary(self) -> dict[str, Any]:
        return {"clients": self.server.client_summary(), "participation": self.server.participation_summary(),
                "density_changes": self.server.density_log, "faults": self.trainer.faults,
                "round_s_median": self.server.wall.round_seconds(),
                "dropouts": {"dropped_updates": self.server.state.dropped,
                             "wasted_client_seconds": self.server.state.wasted_s,
                             "wasted_bytes": self.server.state.wasted_bytes}}

    def faults(self) -> list[dict[str, Any]]:
        return self.trainer.faults
