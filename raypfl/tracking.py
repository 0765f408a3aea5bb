"""MLflow logging: one run per experiment; params = the flattened resolved config; a metric set per evaluation.

Only the driver's run talks to MLflow, through `MlflowClient` with an explicit run id (no global active run), from
a child process of its own (`TrackerProcess`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from raypfl.config import Config, flatten
from raypfl.errors import RunFailed, UserError
from raypfl.locations import SQLITE, tracking_uri

CHILD_NICENESS = 10  # a TrackerProcess's child yields to Ray's start-up and the client actors
SUMMARY_METRICS = ("final_accuracy", "best_accuracy", "reported_accuracy", "reported_accuracy_std",
                   "reported_global_accuracy", "client_updates", "rounds", "dropped_updates", "wasted_client_seconds",
                   "wasted_bytes")
EVAL_METRICS = ("accuracy", "loss", "virtual_time_s", "mean_density", "min_density", "bytes_up", "bytes_down",
                "staleness_mean", "buffer_size", "wall_time_s")


def quiet_mlflow() -> None:
    """MLflow's own messages (database set-up, migrations) stay off the console; warnings still show."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def heterogeneity_tag(cfg: Config) -> str:
    h = cfg.clients.heterogeneity
    return h if isinstance(h, str) else "custom:" + ",".join(f"{c.name}x{c.count}" for c in h)


def _describe(exc: Exception) -> str:
    """The error's type and the first line of its message."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def bad_uri(cfg: Config, exc: Exception) -> UserError:
    return UserError(f"cannot use the MLflow tracking URI {tracking_uri(cfg)!r}: {_describe(exc)}")


def artifact_location(uri: str) -> str | None:
    """Beside a SQLite store, its artifacts (`mlruns/` next to the database file): MLflow's default is the working
    directory at the experiment's creation, which inside a Ray job is a temporary copy. Servers keep their own."""
    if not uri.startswith(SQLITE):
        return None
    return (Path(uri[len(SQLITE):]).parent / "mlruns").as_uri()


class RunTracker:
    """An MLflow run of one experiment, created new or continued after a resume."""

    def __init__(self, cfg: Config, run_name: str, run_id: str | None = None,
                 parent_run_id: str | None = None) -> None:
        quiet_mlflow()
        from mlflow.tracking import MlflowClient

        quiet_mlflow()  # once more: importing mlflow configures its logger
        self.uri = tracking_uri(cfg)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
        except Exception as exc:  # a database that cannot be created, say
            raise bad_uri(cfg, exc) from None
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
                    else client.create_experiment(cfg.tracking.experiment,
                                                  artifact_location=artifact_location(tracking_uri(cfg))))
        except Exception as exc:  # mlflow raises many kinds for a bad URI or an unreachable server
            raise bad_uri(cfg, exc) from None

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
        if record.get("dropped") is not None:  # with availability: dropouts so far, and who is online per class
            metrics.append(Metric("dropped_updates", float(record["dropped"]), stamp, int(record["round"])))
            metrics += [Metric(f"online_share_{name}", float(share), stamp, int(record["round"]))
                        for name, share in record["online_share"].items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_summary(self, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), stamp, 0) for k in SUMMARY_METRICS]
        metrics.append(Metric("faults", float(len(result.get("faults", []))), stamp, 0))  # the list: result.json
        metrics += [Metric(f"time_to_{target}", float(t), stamp, 0)
                    for target, t in result.get("time_to_accuracy", {}).items() if t is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class TrackerProcess:
    """A run's `RunTracker` in a child process (`python -m raypfl.tracking`), created when the run starts.

    Importing MLflow costs more CPU time than the rest of the driver's start-up: begun at once, at lower
    priority, in a process of its own (it never holds the driver's GIL), it uses the CPU time that Ray's start-up
    leaves idle instead of delaying the first training step. Nothing reaches MLflow before `open`. Every call but
    `open` waits for the child's answer, so a failure is raised where the call is made: a bad URI as the UserError
    RunTracker raises, anything else as RunFailed."""

    def __init__(self, cfg: Config, run_name: str, run_id: str | None = None,
                 parent_run_id: str | None = None) -> None:
        self._open_request = {"op": "open", "config": cfg.model_dump(mode="json"), "run_name": run_name,
                              "run_id": run_id, "parent_run_id": parent_run_id}
        # Its own process group, so that Ctrl+C at a terminal (or a signal to the driver's group) reaches the driver
        # alone, which then finishes the run as KILLED. Not its own session: Linux would schedule the session as a
        # group of its own (autogroup), beside the whole of Ray's, and its niceness would be void.
        self._child = subprocess.Popen([sys.executable, "-m", "raypfl.tracking"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, process_group=0)
        self._opening = False  # `open` was called
        self._open_unanswered = False  # the only answer not read right after its request
        self.run_id: str | None = None

    def open(self) -> None:
        """Create (or continue) the MLflow run; returns at once, `opened` waits for it."""
        self._send(self._open_request)
        self._opening = self._open_unanswered = True

    def opened(self) -> str:
        """The run's id, once the child has opened it."""
        if self._open_unanswered:
            self._open_unanswered = False
            self.run_id = str(self._answer()["run_id"])
        assert self.run_id is not None, "opened() before open()"
        return self.run_id

    def log_eval(self, record: dict[str, Any]) -> None:
        self._call({"op": "log_eval", "record": record})

    def log_summary(self, result: dict[str, Any]) -> None:
        self._call({"op": "log_summary", "result": {**{k: result[k] for k in SUMMARY_METRICS},
                                                    "faults": result.get("faults", []),
                                                    "time_to_accuracy": result.get("time_to_accuracy", {})}})

    def log_artifacts(self, paths: list[Path]) -> None:
        self._call({"op": "log_artifacts", "paths": [str(p) for p in paths]})

    def finish(self, status: str = "FINISHED") -> None:
        """End the MLflow run with `status` (if it was opened) and the child with it."""
        try:
            if self._opening and self._child.poll() is None:
                self._call({"op": "finish", "status": status})
        finally:
            self.close()

    def close(self) -> None:
        """Stop the child, whatever it is doing (a run it opened and did not finish is marked KILLED)."""
        if not self._opening:  # nothing has reached MLflow: no need to wait for its imports
            self._child.kill()
        if self._child.stdin is not None and not self._child.stdin.closed:
            with suppress(OSError):  # the child has gone already
                self._child.stdin.close()
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        if self._child.stdout is not None:
            self._child.stdout.close()

    def _send(self, request: dict[str, Any]) -> None:
        assert self._child.stdin is not None
        try:
            self._child.stdin.write(json.dumps(request) + "\n")
            self._child.stdin.flush()
        except OSError:
            raise RunFailed(f"MLflow's logging process has exited (code {self._child.poll()})") from None

    def _answer(self) -> dict[str, Any]:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise RunFailed(f"MLflow's logging process has exited (code {self._child.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise (UserError if answer.get("user") else RunFailed)(answer["error"])
        return answer

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._open_unanswered:  # its answer comes first
            self.opened()
        self._send(request)
        return self._answer()


def serve(requests: IO[str], answers: IO[str]) -> None:
    """The child of a `TrackerProcess`: one JSON answer per JSON request, until `finish` or the end of input
    (the driver is gone: a run opened here and not finished is marked KILLED)."""
    quiet_mlflow()
    import mlflow.entities  # noqa: F401 - the slow imports, before the first request
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the default store
    import mlflow.tracking  # noqa: F401

    tracker: RunTracker | None = None
    for line in requests:
        request = json.loads(line)
        op = request["op"]
        answer: dict[str, Any] = {}
        try:
            if op == "open":
                tracker = RunTracker(Config.model_validate(request["config"]), request["run_name"],
                                     request["run_id"], request["parent_run_id"])
                answer["run_id"] = tracker.run_id
            elif tracker is None:
                pass  # the run never opened (the driver stopped before, or opening failed): nothing to log
            elif op == "log_eval":
                tracker.log_eval(request["record"])
            elif op == "log_summary":
                tracker.log_summary(request["result"])
            elif op == "log_artifacts":
                tracker.log_artifacts([Path(p) for p in request["paths"]])
            elif op == "finish":
                tracker.finish(request["status"])
                tracker = None
        except UserError as exc:
            answer = {"error": str(exc), "user": True}
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which stops the run
            answer = {"error": f"MLflow: {_describe(exc)}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
        if op == "finish":
            return
    if tracker is not None:
        tracker.finish("KILLED")


def _child_main() -> None:
    os.nice(CHILD_NICENESS)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # MLflow's own prints must not mix with the answers
    sys.stdout = sys.stderr
    serve(sys.stdin, answers)


if __name__ == "__main__":
    _child_main()
