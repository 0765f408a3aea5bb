"""Failures: client actors and the aggregator killed mid-run leave the history unchanged; Ctrl+C and SIGTERM
checkpoint and stop; a finished run does not resume; bad inputs stop before anything is created."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from rich.console import Console

from raypfl.config import Config, load_config
from raypfl.runtime.checkpoint import CHECKPOINT
from raypfl.runtime.driver import run_experiment
from tests.helpers import call_with_deadline, comparable, wait_until

ROOT = Path(__file__).parent.parent
# digits, FedGMR (restorations on the way), two client actors: a run of about 20 evaluations
CHAOS = ["clients.num_clients=6", "budget.virtual_time_s=120", "budget.eval_every=4", "experiment.seed=5",
         "tracking.enabled=false", "algorithm.name=fedgmr", "algorithm.recovery.patience=1", "runtime.num_workers=2"]


def ray_processes(name: str) -> list[psutil.Process]:
    """The Ray worker processes of an actor class (Ray titles them `ray::Class.method`) that this test session
    started: other Ray instances on the machine are left alone."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if cmdline.startswith(f"ray::{name}"):
            out.append(proc)
    return out


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_experiment(load_config(overrides=CHAOS), output=tmp_path_factory.mktemp("calm") / "run",
                          console=Console(quiet=True))


def kill_at(evaluations: dict[int, str]) -> Any:
    """An on_eval hook that SIGKILLs one process of the named actor class at the given evaluation numbers."""
    seen = {"n": 0, "killed": []}

    def hook(history: list[dict[str, Any]], _saved: Path | None) -> None:
        seen["n"] += 1
        name = evaluations.get(seen["n"])
        if name is not None:
            victim = ray_processes(name)[0]
            victim.kill()
            seen["killed"].append((name, victim.pid))

    hook.seen = seen  # type: ignore[attr-defined]
    return hook


@pytest.mark.usefixtures("ray_session")
def test_client_actors_killed_again_and_again_leave_the_history_unchanged(undisturbed: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    hook = kill_at({2: "ClientActor", 5: "ClientActor", 9: "ClientActor"})
    result = run_experiment(load_config(overrides=CHAOS), output=tmp_path / "run", console=Console(quiet=True),
                            on_eval=hook)
    assert len(hook.seen["killed"]) == 3
    assert comparable(result["history"]) == comparable(undisturbed["history"])
    faults = result["faults"]
    assert faults and {f["kind"] for f in faults} <= {"train", "evaluate"}
    for fault in faults:
        assert {"virtual_time_s", "round", "worker", "what"} <= set(fault)
        assert "Error" in fault["what"]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["faults"] == faults


@pytest.mark.usefixtures("ray_session")
def test_a_killed_aggregator_is_rebuilt_from_the_latest_snapshot(undisturbed: dict[str, Any],
                                                                tmp_path: Path) -> None:
    hook = kill_at({3: "AggregatorActor", 8: "AggregatorActor"})
    result = run_experiment(load_config(overrides=CHAOS), output=tmp_path / "run", console=Console(quiet=True),
                            on_eval=hook)
    assert len(hook.seen["killed"]) == 2
    assert comparable(result["history"]) == comparable(undisturbed["history"])
    assert [f["kind"] for f in result["faults"]].count("aggregator") == 2


@pytest.mark.usefixtures("ray_session")
def test_a_worker_that_keeps_dying_stops_the_run_with_a_checkpoint(tmp_path: Path) -> None:
    from raypfl.errors import RunFailed

    cfg = load_config(overrides=[*CHAOS, "runtime.max_restarts=1", "runtime.num_workers=1"])
    hook = kill_at({2: "ClientActor", 4: "ClientActor"})  # a second death is one more than max_restarts allows
    with pytest.raises(RunFailed, match="died more often than runtime.max_restarts allows"):
        run_experiment(cfg, output=tmp_path / "run", console=Console(quiet=True), on_eval=hook)
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    resumed = run_experiment(resume=tmp_path / "run", console=Console(quiet=True))
    assert resumed["virtual_time_s"] == 120.0


class Jinxed:
    """A client actor that looks healthy but can never run a job (as when a job's argument object is gone)."""

    def train(self, *_args: Any) -> None:
        from raypfl.runtime.client import NotLoaded

        raise NotLoaded("never")

    def info(self) -> dict[str, Any]:
        return {"loaded": True}


@pytest.mark.usefixtures("ray_session")
def test_a_job_that_can_never_run_stops_the_run_instead_of_looping() -> None:
    import ray

    from raypfl.fl.jobs import TrainJob
    from raypfl.runtime.dispatch import ActorPoolTrainer, WorkersLost

    actors = [ray.remote(Jinxed).options(num_cpus=0).remote() for _ in range(2)]
    trainer = ActorPoolTrainer(actors, [[0, 1]], lambda _client: 0, 8, 8, max_restarts=1)
    trainer.publish(0, {"w": np.zeros(3, np.float32)})
    trainer.submit([TrainJob(client=7, version=0, cycle=0, mask=None, lr=0.1, local_steps=1)])
    with pytest.raises(WorkersLost, match="a train task failed 4 times, last with NotLoaded: never"):
        # (1 + max_restarts) x 2 actors attempts, then it gives up; a trainer that loops instead fails the test
        call_with_deadline(lambda: list(trainer.collect([7])), 120, "collecting a job that can never run")
    assert len(trainer.faults) == 4


Cli = Callable[..., subprocess.Popen[str]]


def latest_ray_session() -> str | None:
    link = Path("/tmp/ray/session_latest")
    return os.path.realpath(link) if link.exists() else None


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it (a run's tracker, its Ray instance)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:  # gone meanwhile
        return
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(tree, timeout=30)


@pytest.fixture()
def cli() -> Iterator[Cli]:
    """Start `python -m raypfl ...`; whatever is still running when the test ends (a test that failed half-way, a
    process that did not stop in time) is killed with everything it started, so that no run, nor its Ray instance,
    outlives the test."""
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "raypfl", *argv], cwd=cwd, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            kill_tree(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=30)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    def exited() -> str | None:
        if proc.poll() is None:
            return None
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # processes it started hold its output open
            out, err = "", "(no output: processes it started still hold it open)"
        return f"`raypfl run` exited with {proc.returncode} ({out[-2000:]}{err[-3000:]})"

    wait_until(path.exists, timeout, str(path), check=exited)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_checkpoints_is_marked_killed_and_resumes(sig: int, code: int, tmp_path: Path,
                                                                      cli: Cli) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = ["--set", "budget.virtual_time_s=250", "--set", "budget.eval_every=5", "--set",
                "runtime.checkpoint_every=1", "--set", f"tracking.uri={uri}", "--set", "clients.num_clients=6"]
    run_dir = tmp_path / "run"
    proc = cli("run", *settings, "--output", str(run_dir), cwd=tmp_path)
    wait_for(run_dir / CHECKPOINT, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "--resume" in err and "Traceback" not in err
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    if sig == signal.SIGINT:
        return  # the resume below is the same after either signal

    resumed = cli("run", "--resume", str(run_dir), cwd=tmp_path)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["virtual_time_s"] == 250.0
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"

    again = cli("run", "--resume", str(run_dir), cwd=tmp_path)  # a finished run: one line, nothing changes
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "already finished" in err and "Traceback" not in err
    assert json.loads((run_dir / "result.json").read_text()) == result


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--set", "training.lr=.inf"], "training.lr"),
    (["--set", "experiment.output_dir=/proc/nope"], "cannot write the run directory"),
    (["--set", "data.dataset=mnist"], "mnist needs data.data_dir"),
    (["--set", "data.dataset=fashion_mnist", "--set", "data.data_dir=/nonexistent"], "does not exist"),
    (["BINARY"], "is not text"),
])
def test_bad_inputs_stop_before_anything_is_created(argv: list[str], fragment: str, tmp_path: Path,
                                                    cli: Cli) -> None:
    if argv == ["BINARY"]:
        binary = tmp_path / "config.yaml"
        binary.write_bytes(bytes(range(256)) * 4)
        argv = [str(binary)]
    before = set(tmp_path.iterdir())
    session = latest_ray_session()
    proc = cli("run", *argv, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert set(tmp_path.iterdir()) == before  # no run directory, no mlflow.db
    assert latest_ray_session() == session  # no Ray instance was started


def test_inside_a_ray_job_relative_outputs_go_to_storage_that_outlives_the_job(tmp_path: Path, cli: Cli) -> None:
    # As `ray job submit` runs it: the job variable set, the working directory a temporary copy. Relative outputs
    # and the default MLflow store resolve against $RAYPFL_STORAGE (else ~/raypfl_results), and the run says where.
    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}}),
           "RAYPFL_STORAGE": str(tmp_path / "store")}
    work = tmp_path / "job"
    work.mkdir()
    proc = cli("run", "--set", "budget.virtual_time_s=20", "--set", "clients.num_clients=3",
               "--output", "run1", cwd=work, env=job)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    run_dir = tmp_path / "store" / "run1"
    assert (run_dir / "result.json").is_file() and (tmp_path / "store" / "mlflow.db").is_file()
    assert f"results: {run_dir}" in err and f"MLflow: sqlite:///{tmp_path / 'store' / 'mlflow.db'}" in err
    assert list(work.iterdir()) == []  # nothing left in the job's working directory


def test_the_demo_is_announced_only_when_nothing_was_changed(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import raypfl.runtime.driver as driver
    from raypfl.cli import main

    calls: list[Config] = []
    monkeypatch.setattr(driver, "run_experiment", lambda cfg=None, **_: calls.append(cfg))
    assert main(["run"]) == 0
    assert "built-in demo" in capsys.readouterr().err
    assert main(["run", "--set", "clients.num_clients=4"]) == 0
    assert "built-in demo" not in capsys.readouterr().err
    assert [c.clients.num_clients for c in calls] == [10, 4]
