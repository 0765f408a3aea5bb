"""`raypfl compare`: runs side by side, from run directories or from MLflow (an experiment, or one sweep).

Runs that differ only in their seed form a group; a group is one row of the table (mean ± std over seeds) and
one curve with a band in each plot.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from raypfl.config import Config, flatten, load_config, validate
from raypfl.errors import UserError
from raypfl.report import reported_accuracy, time_to_accuracy

CURVES = ("virtual_time_s", "accuracy", "mean_density", "bytes_up", "bytes_down")
_DROPOUTS = ("client_updates", "dropped_updates", "wasted_client_seconds", "wasted_bytes")
_NOT_LABELS = ("experiment.seed", "algorithm.name", "algorithm.variant")  # seeds are pooled; the others are the method


@dataclass
class RunData:
    source: str
    algorithm: str
    variant: str
    dataset: str
    heterogeneity: str
    seed: int
    targets: list[float]
    history: list[dict[str, float]]  # per evaluation: the CURVES keys, and cache_accuracy where evaluated
    report_at_s: float | None = None  # the budget's T* (spec E.5)
    report_span: int = 10
    smoothing: int = 20
    swept: dict[str, str] = field(default_factory=dict)  # searched config values other than the seed
    label: str | None = None  # a sweep's named variant (its runs' experiment.name)
    dropouts: dict[str, float] = field(default_factory=dict)  # completed and dropped updates, wasted seconds, bytes

    @property
    def group(self) -> tuple[str, str, str, str]:
        """(method, dataset, heterogeneity, the swept values but the seed)."""
        method = self.label or (self.algorithm if self.variant == "base" else f"{self.algorithm}+{self.variant}")
        swept = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(self.swept.items()))
        return method, self.dataset, self.heterogeneity, swept


def _read_run(path: Path) -> tuple[dict[str, Any], Config]:
    """A run's result and config: from its directory (result.json and config.yaml), its result.json, or a compact
    summary file that holds its config (`raypfl.results.compact_summary`, e.g. docs/reproduction/*/*.json)."""
    if path.is_file() and path.name != "result.json":
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path} is not a run summary (JSON with a config and a history)") from None
        if not isinstance(data, dict) or "config" not in data or "history" not in data:
            raise UserError(f"{path} is not a run summary (JSON with a config and a history)")
        return data, validate(data["config"])
    run_dir = path.parent if path.name == "result.json" else path
    if not (run_dir / "result.json").is_file():
        raise UserError(f"{run_dir} is not a finished run directory (no result.json)")
    return json.loads((run_dir / "result.json").read_text()), load_config(run_dir / "config.yaml")


def load_run_dirs(paths: Iterable[str | Path], swept: list[str] | None = None) -> list[RunData]:
    """Runs from their directories, their result.json files or compact summaries; `swept` names the config keys
    that tell groups apart besides the seed (default: none)."""
    runs = []
    for path in paths:
        result, cfg = _read_run(Path(path))
        flat = flatten(cfg)
        runs.append(RunData(
            source=str(path), algorithm=result["algorithm"], variant=cfg.algorithm.variant,
            dataset=result["dataset"], heterogeneity=result["heterogeneity"], seed=int(result["seed"]),
            targets=list(cfg.budget.target_accuracies),
            history=[{**{k: float(r[k]) for k in CURVES}, "cache_accuracy": r.get("cache_accuracy")}
                     for r in result["history"]],
            swept={k: flat[k] for k in swept or [] if k not in _NOT_LABELS and k in flat},
            report_at_s=cfg.budget.report_at_s, report_span=cfg.budget.report_span, smoothing=cfg.budget.smoothing,
            label=cfg.experiment.name if "variant" in (swept or []) else None,
            dropouts={k: float(result.get(k) or 0) for k in _DROPOUTS}))
    return runs


def load_mlflow_runs(uri: str, experiment: str, sweep: str | None = None) -> tuple[list[RunData], str | None]:
    """Runs of an MLflow experiment, or only the children of one sweep (its parent run's id or sweep name);
    also returns the parent run id when a sweep was asked for."""
    from mlflow.tracking import MlflowClient

    from raypfl.tracking import quiet_mlflow

    quiet_mlflow()
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception as exc:  # mlflow raises many kinds for a bad URI
        raise UserError(f"cannot read MLflow at {uri!r}: {type(exc).__name__}") from None
    if found is None:
        raise UserError(f"no MLflow experiment named '{experiment}' at {uri}")
    parent_id, swept = None, []
    if sweep is not None:
        parents = client.search_runs([found.experiment_id], filter_string=f"tags.`raypfl.sweep` = '{sweep}'")
        parent = parents[0] if parents else _run_or_none(client, sweep)
        if parent is None:
            raise UserError(f"no sweep '{sweep}' (by name or parent run id) in experiment '{experiment}'")
        parent_id = parent.info.run_id
        swept = list(json.loads(parent.data.params.get("search_space", "{}")))
    query = f"tags.mlflow.parentRunId = '{parent_id}'" if parent_id else ""
    runs = []
    for run in client.search_runs([found.experiment_id], filter_string=query, max_results=5000):
        history = _metric_table(client, run.info.run_id)
        if not history or "algorithm" not in run.data.tags:
            continue  # a sweep's parent run, or a run that never evaluated
        params = run.data.params
        runs.append(RunData(
            source=run.info.run_id, algorithm=run.data.tags["algorithm"],
            variant=params.get("algorithm.variant", "base"), dataset=run.data.tags.get("dataset", "?"),
            heterogeneity=run.data.tags.get("heterogeneity", "?"), seed=int(params.get("experiment.seed", 0)),
            targets=json.loads(params.get("budget.target_accuracies", "[]").replace("'", '"')), history=history,
            swept={k: params[k] for k in swept if k not in _NOT_LABELS and k in params},
            report_at_s=_number_or_none(params.get("budget.report_at_s")),
            report_span=int(params.get("budget.report_span", 10)), smoothing=int(params.get("budget.smoothing", 20)),
            label=params.get("experiment.name") if "variant" in swept else None,
            dropouts={k: float(run.data.metrics.get(k, 0.0)) for k in _DROPOUTS}))
    if not runs:
        raise UserError(f"no finished runs in experiment '{experiment}'" + (f" under sweep '{sweep}'" if sweep else ""))
    return runs, parent_id


def _number_or_none(text: str | None) -> float | None:
    return None if text in (None, "null", "None") else float(text)


def _run_or_none(client: Any, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except Exception:  # not a run id
        return None


def _metric_table(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The evaluation records of a run from its metric histories (logged together, one batch per evaluation)."""
    series = {}
    for key in CURVES:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        series[key] = [m.value for m in points]
    n = min(len(v) for v in series.values())
    cache = {m.step: m.value for m in client.get_metric_history(run_id, "cache_accuracy")}
    steps = sorted(m.step for m in client.get_metric_history(run_id, "accuracy"))
    return [{**{k: series[k][i] for k in CURVES}, "cache_accuracy": cache.get(steps[i]) if i < len(steps) else None}
            for i in range(n)]


def _mean_std(values: list[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    mean = fmt.format(scale * statistics.mean(values))
    return mean if len(values) == 1 else f"{mean} ± {fmt.format(scale * statistics.stdev(values))}"


def group_runs(runs: list[RunData]) -> dict[tuple[str, str, str, str], list[RunData]]:
    """Runs that differ only in their seed, by (method, dataset, heterogeneity)."""
    groups: dict[tuple[str, str, str], list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def _reported(run: RunData, cache: bool = True) -> float:
    return float(reported_accuracy(run.history, run.report_at_s, run.report_span, cache=cache)["mean"])


def _times(run: RunData, target: float) -> float | None:
    return time_to_accuracy(run.history, [target], run.smoothing)[f"{target:g}"]


def summary_rows(runs: list[RunData], baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per group. With `baseline` (a method, e.g. fedasync), each row also gives its speed-up to each
    target: the baseline's mean time to it over this group's, within the same dataset, heterogeneity and swept
    values."""
    groups = group_runs(runs)
    targets = sorted({t for run in runs for t in run.targets})
    mean_time: dict[tuple[str, str, str, str], dict[float, float | None]] = {}
    for key, members in groups.items():
        for target in targets:
            hit = [t for t in (_times(r, target) for r in members) if t is not None]
            mean_time.setdefault(key, {})[target] = statistics.mean(hit) if len(hit) == len(members) else None
    rows = []
    for key, members in sorted(groups.items()):
        method, dataset, heterogeneity, swept = key
        row: dict[str, Any] = {"method": f"{method} {swept}".strip(), "dataset": dataset,
                               "heterogeneity": heterogeneity,
                               "seeds": ",".join(str(s) for s in sorted({r.seed for r in members})),
                               "runs": len(members),
                               "reported accuracy (%)": _mean_std([_reported(r) for r in members], 100),
                               "global model, same evaluations (%)": _mean_std(
                                   [_reported(r, cache=False) for r in members], 100),
                               "final accuracy (%)": _mean_std([r.history[-1]["accuracy"] for r in members], 100)}
        for target in targets:
            reach = [_times(r, target) for r in members]
            hit = [t for t in reach if t is not None]
            row[f"time to {100 * target:g} % (s)"] = (_mean_std(hit, fmt="{:.0f}") if hit else "not reached") + (
                f" ({len(hit)}/{len(reach)})" if len(hit) not in (0, len(reach)) else "")
            if baseline is not None:
                base = mean_time.get((baseline, *key[1:]), {}).get(target)
                own = mean_time[key][target]
                row[f"speed-up to {100 * target:g} %"] = f"{base / own:.2f}x" if base and own else "-"
        if any(r.dropouts.get("dropped_updates") for r in runs):  # clients came and went
            row["updates completed / dropped"] = (
                f"{statistics.mean(r.dropouts['client_updates'] for r in members):,.0f} / "
                f"{statistics.mean(r.dropouts['dropped_updates'] for r in members):,.0f}")
            row["wasted client-s"] = _mean_std([r.dropouts["wasted_client_seconds"] for r in members], fmt="{:,.0f}")
            row["wasted MB"] = _mean_std([r.dropouts["wasted_bytes"] / 2**20 for r in members], fmt="{:,.0f}")
        row["final mean density"] = _mean_std([r.history[-1]["mean_density"] for r in members])
        row["MB up + down"] = _mean_std([(r.history[-1]["bytes_up"] + r.history[-1]["bytes_down"]) / 2**20
                                         for r in members], fmt="{:,.0f}")
        rows.append(row)
    return rows


def compare_runs(runs: list[RunData], output: Path, console: Console, baseline: str | None = None) -> list[Path]:
    """Print the table; write it as CSV with the three plots into `output`; return the written files."""
    if baseline is not None and baseline not in {r.group[0] for r in runs}:
        raise UserError(f"--baseline {baseline!r} names none of the compared methods "
                        f"({', '.join(sorted({r.group[0] for r in runs}))})")
    rows = summary_rows(runs, baseline)
    table = Table(title=f"{len(runs)} runs")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=column == "method")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    output.mkdir(parents=True, exist_ok=True)
    written = [output / "compare.csv", output / "compare.md"]
    with written[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written[1].write_text(markdown_table(rows))
    written += plot_comparison(runs, output)
    console.print(f"table and plots written to {output}")
    return written


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, for reports (docs/REPRODUCTION.md is written from one)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _on_grid(run: RunData, key: str, grid: np.ndarray) -> np.ndarray:
    """A run's metric as a step function of virtual time: the last evaluation at or before each grid time."""
    times = np.array([r["virtual_time_s"] for r in run.history])
    values = np.array([r[key] if key != "bytes" else r["bytes_up"] + r["bytes_down"] for r in run.history])
    idx = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(values) - 1)
    return values[idx]


def plot_comparison(runs: list[RunData], output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_runs(runs)
    several = len({g[1:3] for g in groups}) > 1

    def label(group: tuple[str, str, str, str]) -> str:
        name = f"{group[0]} {group[3]}".strip()
        return " · ".join((name, *group[1:3])) if several else name

    paths = []
    for key, ylabel, name in (("accuracy", "test accuracy", "compare_accuracy.png"),
                              ("mean_density", "mean client density", "compare_density.png")):
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for group, members in sorted(groups.items()):
            grid = np.linspace(0, min(r.history[-1]["virtual_time_s"] for r in members), 300)
            curves = np.stack([_on_grid(r, key, grid) for r in members])
            mean = curves.mean(axis=0)
            (line,) = ax.plot(grid, mean, label=f"{label(group)} (n={len(members)})")
            if len(members) > 1:
                std = curves.std(axis=0, ddof=1)
                low, high = np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1)  # both are fractions
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("virtual time (s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(output / name, dpi=120)
        plt.close(fig)
        paths.append(output / name)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for group, members in sorted(groups.items()):
        grid = np.linspace(0, min(r.history[-1]["virtual_time_s"] for r in members), 300)
        traffic = np.stack([_on_grid(r, "bytes", grid) for r in members]).mean(axis=0) / 2**20
        accuracy = np.stack([_on_grid(r, "accuracy", grid) for r in members]).mean(axis=0)
        ax.plot(traffic, accuracy, label=label(group))
    ax.set_xlabel("traffic, up + down (MB)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "compare_bytes.png", dpi=120)
    plt.close(fig)
    paths.append(output / "compare_bytes.png")
    return paths
