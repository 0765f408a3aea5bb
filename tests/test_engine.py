"""End to end on Ray with the embedded digits data: presets, determinism, MLflow, outputs, resume."""

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from raypfl.config import Config, load_config
from raypfl.fl.server import Server
from raypfl.runtime.checkpoint import CHECKPOINT, save_checkpoint
from raypfl.runtime.driver import prepare, run_experiment
from raypfl.runtime.facts import describe_model
from raypfl.runtime.training import ClientTrainer
from tests.helpers import comparable
from tests.inprocess import InProcessTrainer

pytestmark = pytest.mark.usefixtures("ray_session")

SMALL = ["clients.num_clients=6", "budget.virtual_time_s=60", "budget.eval_every=4", "experiment.seed=3"]


def small_config(tracking_uri: str, *extra: str) -> Config:
    return load_config(overrides=[*SMALL, f"tracking.uri={tracking_uri}", *extra])


def run(cfg: Config, out: Path) -> dict[str, Any]:
    return run_experiment(cfg, output=out, console=Console(quiet=True))


@pytest.mark.parametrize("algorithm", ["fedavg", "fedasync", "fedbuff", "fedgmr", "prfl", "heterofl", "fedrolex",
                                       "fjord"])
def test_preset_runs_end_to_end_with_contract_outputs(algorithm: str, tmp_path: Path, tracking_uri: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    cfg = small_config(tracking_uri, f"algorithm.name={algorithm}")
    result = run(cfg, tmp_path / "run")
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "result.json", "history.csv", "curves.png", str(CHECKPOINT)):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "result.json").read_text())
    for key in ("algorithm", "dataset", "seed", "final_accuracy", "best_accuracy", "virtual_time_s",
                "wall_time_s", "rounds", "client_updates", "bytes_up", "bytes_down", "time_to_accuracy",
                "history", "clients"):
        assert key in saved, key
    assert saved["algorithm"] == algorithm and result["virtual_time_s"] == 60.0
    assert result["client_updates"] > 0 and result["bytes_down"] > 0 and result["bytes_up"] > 0
    record = saved["history"][-1]
    for key in ("round", "virtual_time_s", "wall_time_s", "accuracy", "loss", "mean_density", "densities",
                "bytes_up", "bytes_down", "staleness_mean", "buffer_size"):
        assert key in record, key
    assert {c["id"] for c in saved["clients"]} == set(range(6))
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert len(rows) == len(saved["history"]) and "density_d0.05" in rows[0]  # a column per class
    assert saved["participation"]["d0.05"]["clients"] == 3 and saved["faults"] == []

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    runs = mlflow.search_runs(experiment_names=["raypfl"], filter_string=f"tags.algorithm = '{algorithm}'",
                              output_format="list")
    assert len(runs) == 1
    mlrun = runs[0]
    assert mlrun.data.tags["dataset"] == "digits" and mlrun.data.tags["heterogeneity"] == "high"
    assert mlrun.data.params["clients.num_clients"] == "6"
    for key in ("accuracy", "loss", "virtual_time_s", "mean_density", "bytes_up", "bytes_down",
                "staleness_mean"):
        assert key in mlrun.data.metrics, key
    client = mlflow.MlflowClient(tracking_uri)
    assert len(client.get_metric_history(mlrun.info.run_id, "accuracy")) == len(saved["history"])
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"result.json", "config.yaml", "curves.png"} <= artifacts


def test_width_method_with_aux_and_gmr_restores_widths(tmp_path: Path) -> None:
    cfg = load_config(overrides=[*SMALL, "tracking.enabled=false", "algorithm.name=fedrolex",
                                 "algorithm.variant=aux_gmr", "algorithm.recovery.patience=1"])
    result = run(cfg, tmp_path / "run")
    assert result["history"][0]["mean_density"] < 1.0
    assert any(c["client"] >= 0 and c["new"] > c["old"] for c in result["density_changes"])
    assert result["history"][-1]["mean_density"] > result["history"][0]["mean_density"]


def test_training_learns_digits(tmp_path: Path) -> None:
    cfg = load_config(overrides=["clients.num_clients=4", "clients.heterogeneity=low", "budget.virtual_time_s=150",
                                 "tracking.enabled=false", "budget.eval_every=20"])
    result = run(cfg, tmp_path / "run")
    assert result["history"][0]["accuracy"] < 0.3
    assert result["best_accuracy"] > 0.8


def test_history_does_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    histories = []
    for workers in (1, 3):
        cfg = load_config(overrides=[*SMALL, "tracking.enabled=false", f"runtime.num_workers={workers}",
                                     "algorithm.name=fedgmr", "algorithm.recovery.patience=1"])
        histories.append(comparable(run(cfg, tmp_path / f"w{workers}")["history"]))
    assert histories[0] == histories[1]
    assert len(histories[0]) > 3
    assert len({tuple(r["densities"]) for r in histories[0]}) > 1  # restoration happened on the way


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = load_config(overrides=[*SMALL, "tracking.enabled=false", "algorithm.name=prfl",
                                 "algorithm.recovery.patience=1"])
    whole = run(cfg, tmp_path / "whole")["history"]

    # Interrupt a run after three evaluations: its snapshot is what the driver checkpoints. One thread, as
    # in the actors, so that float sums come out bit-identical.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    exp = prepare(cfg)
    trainer = InProcessTrainer(ClientTrainer(exp.spec, exp.dataset.x_train, exp.dataset.y_train, exp.parts,
                                             cfg.training, cfg.experiment.seed, x_test=exp.dataset.x_test,
                                             y_test=exp.dataset.y_test))
    model = describe_model(cfg, exp.spec)
    server = Server(cfg, exp.classes, model.weights, model.sizes, model.facts, trainer)
    for _ in range(3):
        server.run_until_eval()
    run_dir = tmp_path / "interrupted"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text((tmp_path / "whole" / "config.yaml").read_text())
    snap = server.snapshot()
    snap["versions"] = {str(v): trainer.versions[v] for v in snap.pop("held_versions")}
    save_checkpoint(run_dir / CHECKPOINT, snap)
    torch.set_num_threads(threads)

    resumed = run_experiment(resume=run_dir, console=Console(quiet=True))["history"]
    assert comparable(resumed) == comparable(whole)


def test_resume_rejects_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from raypfl.errors import UserError

    with pytest.raises(UserError, match="not a run directory"):
        run_experiment(resume=tmp_path)
