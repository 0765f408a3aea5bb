"""`raypfl sweep` and `raypfl compare`: sweep files, a Tune sweep nested in MLflow, interrupt and resume."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raypfl.cli import main
from raypfl.errors import UserError
from raypfl.runtime.checkpoint import CHECKPOINT
from raypfl.tune import Sweep, untune
from tests.helpers import wait_until

TINY_BASE = {"clients": {"num_clients": 4}, "budget": {"virtual_time_s": 50, "eval_every": 4}}


def write_sweep(folder: Path, name: str, **spec: object) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def mlflow_runs(uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("raypfl")
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"search_space": {"training.lr": {"grid": [0.1]}}, "bogus": 1}, "unknown key 'bogus'"),
        ({"search_space": {}}, "search_space"),
        ({"search_space": {"training.lr": {"grid": [0.1], "choice": [0.2]}}}, "exactly one of"),
        ({"search_space": {"training.lr": {"uniform": [0.5, 0.1]}}}, "lo < hi"),
        ({"search_space": {"training.lr": {"loguniform": [0, 0.1]}}}, "lo > 0"),
        ({"search_space": {"training.lr": {"grid": []}}}, "search_space.training.lr.grid"),
        ({"search_space": {"training.nope": {"grid": [1]}}}, "search_space 'training.nope': unknown config key"),
        ({"search_space": {"training.lr": {"grid": [-1]}}}, "search_space 'training.lr'"),
        ({"search_space": {"training.lr": {"grid": [0.1]}}, "metric": "speed"}, "'metric'"),
        ({"search_space": {"training.lr": {"grid": [0.1]}}, "mode": "up"}, "'mode'"),
        ({"search_space": {"training.lr": {"grid": [0.1]}}, "base": {"clients": {"num_clients": 0}}},
         "sweep base: invalid value 0 for 'clients.num_clients'"),
        ({"search_space": {"training.lr": {"grid": [0.1]}}, "base": "missing.yaml"}, "missing.yaml"),
        ({"search_space": {"training.lr": {"grid": [0.1]}}, "scheduler": "hyperband"}, "scheduler"),
    ],
)
def test_invalid_sweep_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 spec: dict, fragment: str) -> None:
    path = write_sweep(tmp_path, "bad", **spec)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and fragment in err, err


def test_sweep_file_resolution(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    path = write_sweep(tmp_path, "s", base="base.yaml", num_samples=2, scheduler="asha",
                       search_space={"algorithm.name": {"grid": ["fedavg", "fedgmr"]},
                                     "training.lr": {"loguniform": [0.01, 0.1]}})
    sweep = Sweep(path, ["experiment.output_dir=" + str(tmp_path / "out")])
    assert sweep.name == "s" and sweep.dir == tmp_path / "out" / "sweeps" / "s"
    assert sweep.expected_trials == 4 and sweep.spec.scheduler is not None
    cfg = sweep.trial_config({"algorithm.name": "fedavg", "training.lr": 0.02})
    assert cfg.algorithm.name == "fedavg" and cfg.training.lr == 0.02 and cfg.runtime.num_workers == 1
    assert cfg.tracking.uri is not None and cfg.tracking.uri.startswith("sqlite:////")  # absolute for trials
    bundles = sweep.bundles({"algorithm.name": "fedavg", "training.lr": 0.02})
    assert bundles[0] == {"CPU": 1.0} and len(bundles) == 2 and bundles[1]["GPU"] > 0


def test_linked_overrides_follow_a_searched_value(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    path = write_sweep(tmp_path, "linked", base="base.yaml", search_space={"training.lr": {"grid": [0.1, 0.2]}},
                       linked={"training.lr": {"0.2": {"budget.virtual_time_s": 77, "budget.eval_every": 3}}})
    sweep = Sweep(path)
    slow, fast = sweep.trial_config({"training.lr": 0.1}), sweep.trial_config({"01 training.lr": 0.2})
    assert (fast.budget.virtual_time_s, fast.budget.eval_every) == (77, 3)
    assert slow.budget.virtual_time_s == Sweep(path).config.budget.virtual_time_s != 77


@pytest.mark.parametrize(("linked", "fragment"), [
    ({"training.batch_size": {"4": {"budget.virtual_time_s": 5}}}, "'training.batch_size' is not a grid or choice"),
    ({"training.lr": {"0.3": {"budget.virtual_time_s": 5}}}, "never takes the value(s) 0.3"),
    ({"training.lr": {"0.1": {"budget.virtual_time_s": -5}}}, "linked to training.lr = 0.1"),
])
def test_bad_linked_overrides_are_one_line_errors(tmp_path: Path, linked: dict, fragment: str) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    path = write_sweep(tmp_path, "bad", base="base.yaml", search_space={"training.lr": {"grid": [0.1, 0.2]}},
                       linked=linked)
    with pytest.raises(UserError, match=re.escape(fragment)):
        Sweep(path)


def test_trials_run_variants_fastest_and_the_last_key_slowest(tmp_path: Path) -> None:
    from ray.tune.search.variant_generator import generate_variants

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    path = write_sweep(tmp_path, "order", base="base.yaml",
                       variants={"b": {"algorithm.name": "fedavg"}, "a": {"algorithm.name": "fedasync"}},
                       search_space={"training.lr": {"grid": [0.1, 0.2]}, "experiment.seed": {"grid": [0, 1]}})
    sweep = Sweep(path)
    order = [untune(params) for _, params in generate_variants(sweep.tune_space())]
    assert [(p["experiment.seed"], p["training.lr"], p["variant"]) for p in order] == [
        (0, 0.1, "b"), (0, 0.1, "a"), (0, 0.2, "b"), (0, 0.2, "a"),
        (1, 0.1, "b"), (1, 0.1, "a"), (1, 0.2, "b"), (1, 0.2, "a")]
    assert sweep.trial_config(order[1]).algorithm.name == "fedasync"


@pytest.mark.usefixtures("ray_session")
def test_four_trial_sweep_nests_in_mlflow_and_compares(tmp_path: Path, tracking_uri: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = {**TINY_BASE, "experiment": {"output_dir": str(tmp_path / "runs")}, "tracking": {"uri": tracking_uri}}
    path = write_sweep(tmp_path, "four", base=base,
                       search_space={"algorithm.name": {"grid": ["fedavg", "fedgmr"]},
                                     "experiment.seed": {"grid": [0, 1]}})
    assert main(["sweep", str(path)]) == 0
    client, runs = mlflow_runs(tracking_uri)
    parents = [r for r in runs if r.data.tags.get("raypfl.sweep") == "four"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    assert {(r.data.tags["algorithm"], r.data.params["experiment.seed"]) for r in children} == {
        ("fedavg", "0"), ("fedavg", "1"), ("fedgmr", "0"), ("fedgmr", "1")}
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("accuracy", "virtual_time_s"):
            assert len(client.get_metric_history(child.info.run_id, key)) >= 2, key
    assert "best_final_accuracy" in client.get_run(parent.info.run_id).data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "best_config.yaml", "compare"} <= artifacts
    capsys.readouterr()

    out_dir = tmp_path / "cmp"
    code = main(["compare", "--experiment", "raypfl", "--sweep", "four", "--tracking-uri", tracking_uri,
                 "--output", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "fedavg" in out and "fedgmr" in out and "4 runs" in out
    for name in ("compare.csv", "compare.md", "compare_accuracy.png", "compare_density.png", "compare_bytes.png"):
        assert (out_dir / name).stat().st_size > 0, name
    rows = (out_dir / "compare.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("fedavg,digits,high,\"0,1\",2,")
    table = (out_dir / "compare.md").read_text().splitlines()
    assert len(table) == 4 and table[0].startswith("| method | dataset |") and table[1].startswith("|---|")
    assert table[2].startswith("| fedavg | digits | high | 0,1 | 2 |") and "final mean density" in table[0]

    trial_dirs = sorted((tmp_path / "runs" / "sweeps" / "four" / "trials").iterdir())
    assert main(["compare", *map(str, trial_dirs), "--output", str(tmp_path / "cmp2")]) == 0
    assert (tmp_path / "cmp2" / "compare_accuracy.png").is_file()
    assert main(["compare", "--by-name", *map(str, trial_dirs), "--output", str(tmp_path / "cmp3")]) == 0
    names = {line.split(",")[0] for line in (tmp_path / "cmp3" / "compare.csv").read_text().splitlines()[1:]}
    assert names == {yaml.safe_load((d / "config.yaml").read_text())["experiment"]["name"] for d in trial_dirs}


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["compare"], "give either run directories or --experiment"),
        (["compare", "/nonexistent/run"], "not a finished run directory"),
        (["compare", "--sweep", "x"], "give either run directories or --experiment"),
    ],
)
def test_bad_compare_input(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err


def test_compare_unknown_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str], tracking_uri: str) -> None:
    assert main(["compare", "--experiment", "nope", "--tracking-uri", tracking_uri]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err


def test_resume_needs_an_existing_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, "never", base={"experiment": {"output_dir": str(tmp_path)}},
                       search_space={"training.lr": {"grid": [0.1]}})
    assert main(["sweep", str(path), "--resume"]) == 2
    assert "no sweep named 'never'" in capsys.readouterr().err


def test_interrupted_sweep_resumes_with_every_trial_exactly_once(tmp_path: Path, tracking_uri: str) -> None:
    """A real Ctrl+C on a running `raypfl sweep` (its own Ray instance), then `--resume`."""
    base = {"clients": {"num_clients": 4}, "budget": {"virtual_time_s": 80, "eval_every": 4},
            "runtime": {"checkpoint_every": 1}, "experiment": {"output_dir": str(tmp_path / "runs")},
            "tracking": {"uri": tracking_uri}}
    path = write_sweep(tmp_path, "resumable", base=base, max_concurrent_trials=1,
                       search_space={"algorithm.name": {"grid": ["fedavg", "fedgmr"]},
                                     "experiment.seed": {"grid": [0, 1]}})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "raypfl", "sweep", str(path)]
    trials = tmp_path / "runs" / "sweeps" / "resumable" / "trials"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    def second_under_way() -> bool:  # a trial finished, and the next one has saved a checkpoint to resume from
        runs = [run for run in trials.glob("*") if run.is_dir()]
        return any((run / "result.json").is_file() for run in runs) and \
            any((run / CHECKPOINT).is_file() and not (run / "result.json").is_file() for run in runs)

    def exited() -> str | None:
        return None if process.poll() is None else f"`raypfl sweep` exited with {process.returncode}"

    try:
        wait_until(second_under_way, 300, "a finished trial and a checkpoint of the next one", interval=0.5,
                   check=exited)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert "--resume" in err
    assert len(list(trials.glob("*/result.json"))) < 4

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(list(trials.glob("*/result.json"))) == 4
    client, runs = mlflow_runs(tracking_uri)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted((r.data.tags["algorithm"], r.data.params["experiment.seed"]) for r in children) == [
        ("fedavg", "0"), ("fedavg", "1"), ("fedgmr", "0"), ("fedgmr", "1")]
    for child in children:
        assert child.info.status == "FINISHED"
        times = [m.value for m in client.get_metric_history(child.info.run_id, "virtual_time_s")]
        assert len(times) == len(set(times)) and max(times) == 80  # replayed evaluations are logged once


def test_sweep_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "twice", base={"experiment": {"output_dir": str(tmp_path)}},
                       search_space={"training.lr": {"grid": [0.1]}})
    (tmp_path / "sweeps" / "twice" / "tune" / "twice").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists"):
        from raypfl.tune import run_sweep

        run_sweep(path)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "tune_configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweeps_are_valid(path: Path) -> None:
    sweep = Sweep(path)
    assert sweep.name == path.stem and sweep.expected_trials >= 3
    assert path.read_text().startswith("#")  # each says what it answers and how long it takes
