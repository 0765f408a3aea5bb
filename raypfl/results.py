"""What a finished run leaves behind: the contents of result.json, and the run directory's outputs (result.json,
history.csv, curves.png) with the same summary and files handed to MLflow. The formats are `raypfl.report`'s."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raypfl.config import Config
from raypfl.report import plot_curves, reported_accuracy, time_to_accuracy, write_history_csv, write_json
from raypfl.tracking import heterogeneity_tag

if TYPE_CHECKING:
    from raypfl.tracking import TrackerProcess


def build_result(cfg: Config, history: list[dict[str, Any]], summary: dict[str, Any], run_dir: Path,
                 mlflow_run_id: str | None) -> dict[str, Any]:
    """result.json's metrics and history, from the evaluations and the aggregator's summary (its clients,
    participation and density changes)."""
    last = history[-1]
    reported = reported_accuracy(history, cfg.budget.report_window)
    return {
        "algorithm": cfg.algorithm.name,
        "dataset": cfg.data.dataset,
        "heterogeneity": heterogeneity_tag(cfg),
        "seed": cfg.experiment.seed,
        "final_accuracy": last["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in history),
        "reported_accuracy": reported["mean"],
        "reported_accuracy_std": reported["std"],
        "reported_evaluations": reported["evaluations"],
        "virtual_time_s": last["virtual_time_s"],
        "wall_time_s": last["wall_time_s"],
        "rounds": last["round"],
        "client_updates": last["updates"],
        "bytes_up": last["bytes_up"],
        "bytes_down": last["bytes_down"],
        "time_to_accuracy": time_to_accuracy(history, cfg.budget.target_accuracies),
        "history": history,
        "clients": summary["clients"],
        "participation": summary["participation"],
        "density_changes": summary["density_changes"],
        "run_dir": str(run_dir),
        "mlflow_run_id": mlflow_run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_outputs(run_dir: Path, result: dict[str, Any], class_index: np.ndarray, class_names: list[str],
                  tracker: TrackerProcess | None) -> None:
    """Write result.json, history.csv and curves.png into the run directory, and log the summary and the files
    (with config.yaml) to the run's MLflow run."""
    history = result["history"]
    write_json(run_dir / "result.json", result)
    write_history_csv(run_dir / "history.csv", history, class_index, class_names)
    plot_curves(run_dir / "curves.png", history, f"{result['algorithm']} · {result['dataset']} · "
                f"{result['heterogeneity']} heterogeneity · seed {result['seed']}",
                result["density_changes"], (class_index, class_names))
    if tracker is not None:
        tracker.log_summary(result)
        tracker.log_artifacts([run_dir / n for n in ("result.json", "config.yaml", "curves.png", "history.csv")])
