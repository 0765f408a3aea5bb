"""MLflow logging: one run per experiment; params = the flattened resolved config; a metric set per evaluation.

Only the driver talks to MLflow, through `MlflowClient` with an explicit run id (no global active run).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from raypfl.config import Config, flatten
from raypfl.errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"
EVAL_METRICS = ("accuracy", "loss", "virtual_time_s", "mean_density", "min_density", "bytes_up", "bytes_down",
                "staleness_mean", "buffer_size", "wall_time_s")


def quiet_mlflow() -> None:
    """MLflow's own messages (database set-up, migrations) stay off the console; warnings still show."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(cfg: Config) -> str:
    """`tracking.uri` overrides `MLFLOW_TRACKING_URI`, which overrides the default SQLite file in the cwd.

    A relative SQLite path is made absolute here: Ray processes (Tune trials above all) run in other folders."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def heterogeneity_tag(cfg: Config) -> str:
    h = cfg.clients.heterogeneity
    return h if isinstance(h, str) else "custom:" + ",".join(f"{c.name}x{c.count}" for c in h)


class RunTracker:
    """An MLflow run of one experiment, created new or continued after a resume."""

    def __init__(self, cfg: Config, run_name: str, run_id: str | None = None,
                 parent_run_id: str | None = None) -> None:
        quiet_mlflow()
        from mlflow.tracking import MlflowClient

        quiet_mlflow()  # once more: importing mlflow configures its logger
        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self.experiment_id(self.client, cfg)
        self._logged: set[float] = set()
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            # a resumed run replays the evaluations after its checkpoint: log each only once
            self._logged = {m.value for m in self.client.get_metric_history(run_id, "virtual_time_s")}
            return
        tags = {"algorithm": cfg.algorithm.name, "dataset": cfg.data.dataset,
                "heterogeneity": heterogeneity_tag(cfg), "mlflow.runName": run_name}
        if parent_run_id is not None:
            tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self._log_params(cfg)

    @staticmethod
    def experiment_id(client: Any, cfg: Config) -> str:
        """The id of `tracking.experiment`, created if needed; a bad URI or a dead server is a user error."""
        try:
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            return (experiment.experiment_id if experiment is not None
                    else client.create_experiment(cfg.tracking.experiment))
        except Exception as exc:  # mlflow raises many kinds for a bad URI or an unreachable server
            raise UserError(f"cannot use the MLflow tracking URI {tracking_uri(cfg)!r}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _log_params(self, cfg: Config) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in sorted(flatten(cfg).items())]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_eval(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if float(record["virtual_time_s"]) in self._logged:
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(record[k]), stamp, int(record["round"])) for k in EVAL_METRICS]
        if record.get("cache_accuracy") is not None:
            metrics.append(Metric("cache_accuracy", float(record["cache_accuracy"]), stamp, int(record["round"])))
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_summary(self, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        keys = ("final_accuracy", "best_accuracy", "reported_accuracy", "reported_accuracy_std", "client_updates",
                "rounds")
        metrics = [Metric(k, float(result[k]), stamp, 0) for k in keys]
        metrics.append(Metric("faults", float(len(result.get("faults", []))), stamp, 0))  # the list: result.json
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
