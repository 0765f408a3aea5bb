"""What a finished run leaves behind: the contents of result.json, and the run directory's outputs (result.json,
history.csv, curves.png) with the same summary and files handed to MLflow. The formats are `raypfl.report`'s."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raypfl.config import Config, read_yaml
from raypfl.report import plot_curves, reported_accuracy, time_to_accuracy, write_history_csv, write_json
from raypfl.tracking import heterogeneity_tag

if TYPE_CHECKING:
    from raypfl.tracking import TrackerProcess


def build_result(cfg: Config, history: list[dict[str, Any]], summary: dict[str, Any], run_dir: Path,
                 mlflow_run_id: str | None) -> dict[str, Any]:
    """result.json's metrics and history, from the evaluations and the aggregator's summary (its clients,
    participation and density changes)."""
    last = history[-1]
    b = cfg.budget
    reported = reported_accuracy(history, b.report_at_s, b.report_span)
    global_only = reported_accuracy(history, b.report_at_s, b.report_span, cache=False)
    return {
        "algorithm": cfg.algorithm.name,
        "variant": cfg.algorithm.variant,
        "dataset": cfg.data.dataset,
        "heterogeneity": heterogeneity_tag(cfg),
        "seed": cfg.experiment.seed,
        "final_accuracy": last["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in history),
        "reported_accuracy": reported["mean"],
        "reported_accuracy_std": reported["std"],
        "reported_global_accuracy": global_only["mean"],
        "reported_global_accuracy_std": global_only["std"],
        "reported_evaluations": reported["evaluations"],
        "reported_at_s": reported["center_s"],
        "virtual_time_s": last["virtual_time_s"],
        "wall_time_s": last["wall_time_s"],
        "rounds": last["round"],
        "client_updates": last["updates"],
        "bytes_up": last["bytes_up"],
        "bytes_down": last["bytes_down"],
        **summary["dropouts"],
        "time_to_accuracy": time_to_accuracy(history, b.target_accuracies, b.smoothing),
        "time_to_accuracy_raw": time_to_accuracy(history, b.target_accuracies),
        "restoration": restoration_note(cfg, summary["density_changes"]),
        "history": history,
        "clients": summary["clients"],
        "participation": summary["participation"],
        "density_changes": summary["density_changes"],
        "run_dir": str(run_dir),
        "mlflow_run_id": mlflow_run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def restoration_note(cfg: Config, changes: list[dict[str, Any]]) -> str | None:
    """One line when restoration was configured but never changed a density (None otherwise)."""
    rec = cfg.algorithm.recovery
    if not cfg.algorithm.sub_models or rec.trigger == "none" or changes:
        return None
    if rec.has_time_schedule:
        length = rec.schedule_length(cfg.data.dataset, cfg.budget.virtual_time_s)
        return (f"restoration never fired: the time schedule's first point is at {rec.time_points[0] * length:,.0f} "
                f"virtual s, past this run's {cfg.budget.virtual_time_s:,.0f} s (set algorithm.recovery.time_total_s, "
                "or trigger=budget to scale the schedule to the run)")
    return (f"restoration never fired: no plateau of {rec.patience} evaluations (after the first, which only arms "
            "the trigger) within the budget (lower algorithm.recovery.patience, evaluate more often, run longer, or "
            "set algorithm.recovery.trigger=budget)")


# What a compact per-run summary keeps of result.json: enough for `raypfl compare` to recompute every figure
SUMMARY_KEYS = ("algorithm", "variant", "dataset", "heterogeneity", "seed", "final_accuracy", "best_accuracy",
                "reported_accuracy", "reported_accuracy_std", "reported_global_accuracy", "reported_evaluations",
                "reported_at_s", "virtual_time_s", "rounds", "client_updates", "bytes_up", "bytes_down",
                "dropped_updates", "wasted_client_seconds", "wasted_bytes",
                "time_to_accuracy", "restoration", "participation", "density_changes")
SUMMARY_HISTORY = ("round", "virtual_time_s", "accuracy", "cache_accuracy", "loss", "mean_density", "min_density",
                   "bytes_up", "bytes_down", "updates", "dropped", "online_share")


def compact_summary(result: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A run in kilobytes: its resolved config, metrics, density changes and the history's scalars (no per-client
    lists), from which `raypfl compare` regenerates every number of a comparison."""
    return {"summary_of": "raypfl run", "config": config, **{k: result.get(k) for k in SUMMARY_KEYS},
            "history": [{k: r.get(k) for k in SUMMARY_HISTORY} for r in result["history"]]}


def write_outputs(run_dir: Path, result: dict[str, Any], class_index: np.ndarray, class_names: list[str],
                  tracker: TrackerProcess | None) -> None:
    """Write result.json, history.csv and curves.png into the run directory, and log the summary and the files
    (with config.yaml) to the run's MLflow run."""
    history = result["history"]
    write_json(run_dir / "result.json", result)
    write_json(run_dir / "summary.json", compact_summary(result, read_yaml(run_dir / "config.yaml")))
    write_history_csv(run_dir / "history.csv", history, class_index, class_names)
    plot_curves(run_dir / "curves.png", history, f"{result['algorithm']} · {result['dataset']} · "
                f"{result['heterogeneity']} heterogeneity · seed {result['seed']}",
                result["density_changes"], (class_index, class_names))
    if tracker is not None:
        tracker.log_summary(result)
        tracker.log_artifacts([run_dir / n for n in ("result.json", "config.yaml", "curves.png", "history.csv")])
