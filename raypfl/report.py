"""Results of one run: result.json contents, history.csv, curves.png and the console summary."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table


def time_to_accuracy(history: list[dict[str, Any]], targets: list[float], window: int = 1) -> dict[str, float | None]:
    """First virtual time at which the global model's accuracy, averaged over the last `window` evaluations (fewer
    at the start of the run), reaches each target (None if never). The papers smooth with a window of 20."""
    accuracy = np.array([r["accuracy"] for r in history], dtype=np.float64)
    sums = np.concatenate([[0.0], np.cumsum(accuracy)])
    ends = np.arange(1, len(accuracy) + 1)
    starts = np.maximum(0, ends - window)
    smoothed = (sums[ends] - sums[starts]) / (ends - starts)
    out: dict[str, float | None] = {}
    for target in targets:
        hit = np.flatnonzero(smoothed >= target - 1e-12)
        out[f"{target:g}"] = float(history[hit[0]]["virtual_time_s"]) if len(hit) else None
    return out


def reported_accuracy(history: list[dict[str, Any]], report_at_s: float | None = None, span: int = 10,
                      cache: bool = True) -> dict[str, float | int]:
    """Spec E.5's reported metric: over the evaluations within `span` of the first one at or past T* =
    `report_at_s` (default: the run's end, so the last span + 1), the mean and standard deviation of
    max(global model, FedAvg-of-cache model) accuracy (the global model's alone where no cache model was
    evaluated, or with `cache=False`)."""
    times = [r["virtual_time_s"] for r in history]
    at = times[-1] if report_at_s is None else report_at_s
    center = next((k for k, t in enumerate(times) if t >= at - 1e-9), len(times) - 1)
    chosen = history[max(0, center - span):center + span + 1]
    scores = [max(r["accuracy"], (r.get("cache_accuracy") or 0.0) if cache else 0.0) for r in chosen]
    return {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
            "evaluations": len(scores), "from_s": chosen[0]["virtual_time_s"], "to_s": chosen[-1]["virtual_time_s"],
            "center_s": times[center]}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    tmp.replace(path)


def class_densities(record: dict[str, Any], class_index: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """The mean client density of each heterogeneity class at one evaluation."""
    if record.get("densities") is None:  # a population too large to list: the record carries the means
        return dict(record["class_densities"])
    densities = np.asarray(record["densities"], dtype=np.float64)
    sums = np.bincount(class_index, weights=densities, minlength=len(class_names))
    counts = np.bincount(class_index, minlength=len(class_names))
    return {name: float(sums[k] / counts[k]) for k, name in enumerate(class_names) if counts[k]}


def write_history_csv(path: Path, history: list[dict[str, Any]], class_index: np.ndarray,
                      class_names: list[str]) -> None:
    """One row per evaluation; the mean density of each heterogeneity class is a column `density_<class>`
    (a column per class, not per client, so that a population of thousands stays readable)."""
    if not history:
        path.write_text("")
        return
    scalar_keys = [k for k in history[0] if k not in ("densities", "class_densities", "online_share")]
    online = list(history[0].get("online_share") or {})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(scalar_keys + [f"density_{name}" for name in class_names] + [f"online_{n}" for n in online])
        for record in history:
            per_class = class_densities(record, class_index, class_names)
            writer.writerow([record[k] for k in scalar_keys] + [f"{per_class[n]:g}" for n in class_names]
                            + [f"{record['online_share'][n]:g}" for n in online])


def plot_curves(path: Path, history: list[dict[str, Any]], title: str,
                changes: list[dict[str, Any]] | None = None,
                classes: tuple[np.ndarray, list[str]] | None = None) -> None:
    """Accuracy and client density (mean, min and, given `classes` = (class index per client, class names), each
    class's mean) against virtual time; restoration steps of the density floor are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["virtual_time_s"] for r in history]
    fig, (ax_acc, ax_den) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [2, 1]})
    ax_acc.plot(t, [100 * r["accuracy"] for r in history], marker=".", color="tab:blue")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.set_title(title)
    ax_den.plot(t, [r["mean_density"] for r in history], color="tab:green", label="mean")
    ax_den.plot(t, [r["min_density"] for r in history], color="tab:orange", linestyle="--", label="min")
    if classes is not None and len(classes[1]) > 1:
        per_class = [class_densities(r, *classes) for r in history]
        for name in classes[1]:
            ax_den.plot(t, [c[name] for c in per_class], linewidth=0.8, alpha=0.7, label=f"class {name}")
    if any(r.get("online_share") for r in history):  # with availability: the share of clients online, per class
        ax_on = ax_acc.twinx()
        names = list(history[-1]["online_share"])
        for name in names:
            ax_on.plot(t, [r.get("online_share", {}).get(name, float("nan")) for r in history], linewidth=0.8,
                       linestyle=":", alpha=0.8, label=f"online {name}")
        ax_on.set_ylim(0, 1.05)
        ax_on.set_ylabel("share of clients online")
        ax_on.legend(loc="lower right", fontsize=6, ncol=2)
    steps = [c for c in changes or [] if c["client"] < 0]
    for k, change in enumerate(steps):
        for ax in (ax_acc, ax_den):
            ax.axvline(change["time_s"], color="tab:red", alpha=0.35, linewidth=1,
                       label="floor raised" if k == 0 and ax is ax_den else None)
    ax_den.set_ylim(0, 1.05)
    ax_den.set_ylabel("client density")
    ax_den.set_xlabel("virtual time (s)")
    ax_den.legend(loc="lower right", fontsize=7, ncol=2)
    ax_den.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"{result['algorithm']} on {result['dataset']} (seed {result['seed']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("final accuracy", f"{100 * result['final_accuracy']:.2f} %")
    table.add_row(f"reported accuracy ({result['reported_evaluations']} evaluations around "
                  f"{result['reported_at_s']:,.0f} s)",
                  f"{100 * result['reported_accuracy']:.2f} ± {100 * result['reported_accuracy_std']:.2f} %")
    table.add_row("best accuracy", f"{100 * result['best_accuracy']:.2f} %")
    for target, t in result["time_to_accuracy"].items():
        table.add_row(f"time to {100 * float(target):g} % (smoothed)", "not reached" if t is None else f"{t:,.0f} s")
    table.add_row("virtual time", f"{result['virtual_time_s']:,.0f} s")
    table.add_row("wall time", f"{result['wall_time_s']:,.1f} s")
    table.add_row("rounds / client updates", f"{result['rounds']} / {result['client_updates']}")
    table.add_row("updates per wall second", f"{result['client_updates'] / max(result['wall_time_s'], 1e-9):.1f}")
    table.add_row("bytes up / down", f"{result['bytes_up'] / 2**20:,.1f} / {result['bytes_down'] / 2**20:,.1f} MB")
    if result.get("dropped_updates"):
        table.add_row("dropped updates (client went offline)", f"{result['dropped_updates']:,}, "
                      f"{result['wasted_client_seconds']:,.0f} client-s and "
                      f"{result['wasted_bytes'] / 2**20:,.1f} MB wasted")
    return table
