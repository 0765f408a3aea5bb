"""MLflow logging from its child process (`raypfl.tracking.TrackerProcess`), and the run's start time."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raypfl.config import load_config
from raypfl.errors import RunFailed, UserError
from raypfl.tracking import EVAL_METRICS, SUMMARY_METRICS, TrackerProcess


def record(round_: int, accuracy: float) -> dict[str, float]:
    return {**{k: 0.5 for k in EVAL_METRICS}, "round": round_, "accuracy": accuracy, "virtual_time_s": 10.0 * round_}


def test_the_child_logs_the_run_reports_failures_where_they_happen_and_finishes(tmp_path: Path,
                                                                                 tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    cfg = load_config(overrides=[f"tracking.uri={tracking_uri}", "tracking.experiment=child"])
    tracker = TrackerProcess(cfg, "a-run")
    tracker.open()
    tracker.log_eval(record(1, 0.25))  # waits for the run to open first
    tracker.log_eval(record(2, 0.75))
    with pytest.raises(RunFailed, match="MLflow: KeyError"):
        tracker.log_eval({"round": 3})
    (tmp_path / "note.txt").write_text("hello")
    tracker.log_summary({**{k: 1.0 for k in SUMMARY_METRICS}, "faults": [{"actor": 0}], "history": ["not sent"]})
    tracker.log_artifacts([tmp_path / "note.txt", tmp_path / "missing.txt"])
    tracker.finish("FINISHED")

    client = MlflowClient(tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a-run"
    assert run.data.tags["algorithm"] == cfg.algorithm.name
    assert run.data.params["training.lr"] == str(cfg.training.lr)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "accuracy")] == [(1, 0.25), (2, 0.75)]
    assert run.data.metrics["faults"] == 1.0 and run.data.metrics["final_accuracy"] == 1.0
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["note.txt"]


def test_a_run_whose_driver_vanishes_is_marked_killed(tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    tracker = TrackerProcess(load_config(overrides=[f"tracking.uri={tracking_uri}"]), "gone")
    tracker.open()
    run_id = tracker.opened()
    tracker.close()  # the end of its input: what the child sees when the driver is killed
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "KILLED"


def test_a_bad_tracking_uri_is_a_user_error(tmp_path: Path) -> None:
    tracker = TrackerProcess(load_config(overrides=["tracking.uri=sqlite:////proc/nope/mlflow.db"]), "bad")
    tracker.open()
    with pytest.raises(UserError, match="cannot use the MLflow tracking URI 'sqlite:////proc/nope/mlflow.db'"):
        tracker.opened()
    tracker.finish("FAILED")  # the driver's clean-up after the error: nothing left to do, no error


def test_a_tracker_never_opened_stops_at_once_and_writes_nothing(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = TrackerProcess(load_config(overrides=[f"tracking.uri={uri}"]), "never")
    started = time.monotonic()
    tracker.finish("FAILED")  # a run that failed before opening in MLflow (Ray unreachable, say)
    # Killed at once rather than waited for: a child left to finish its MLflow imports (~2.5 CPU s, far more on a
    # loaded machine) exits by itself, with 0, when its input ends. The time bound only guards against a hang.
    assert tracker._child.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 30 and tracker.run_id is None
    assert list(tmp_path.iterdir()) == []


def test_a_bad_tracking_uri_stops_the_run_and_leaves_no_run_directory(ray_session: None, tmp_path: Path) -> None:
    from raypfl.runtime.driver import run_experiment

    cfg = load_config(overrides=["budget.virtual_time_s=50", "tracking.uri=sqlite:////proc/nope/mlflow.db"])
    with pytest.raises(UserError, match="cannot use the MLflow tracking URI"):
        run_experiment(cfg, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_start_up_is_measured_from_the_process_start() -> None:
    # The process starts after `before` (taken here just before it is created) and before its first statement
    # (`now`), however long a loaded machine takes in between; /proc counts in clock ticks (10 ms), the start is
    # rounded down to one. /proc/stat's whole-second boot time made it up to 1 s off either way.
    code = ("import time; now = time.time()\n"
            "from raypfl.runtime.driver import _process_start\n"
            "print(now, _process_start())")
    tick = 1 / os.sysconf("SC_CLK_TCK")
    for _ in range(3):
        before = time.time()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
        now, start = map(float, out.stdout.split())
        assert before - tick - 0.005 <= start <= now + 0.005, (before - start, now - start)
