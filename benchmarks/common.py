"""Run named variants of one experiment on the same data, heterogeneity, seeds and virtual budget; tabulate."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.output import wide_console
from raypfl.config import load_config
from raypfl.runtime.driver import run_experiment


def fashion_base(budget: float) -> list[str]:
    """The papers' comparison setting on real data: Fashion-MNIST, the CNN, 10 clients, `high` heterogeneity,
    Dirichlet α = 0.6."""
    return ["data.dataset=fashion_mnist", "model.name=cnn", "clients.num_clients=10", "clients.heterogeneity=high",
            "data.partition.kind=dirichlet", "data.partition.alpha=0.6", f"budget.virtual_time_s={budget}",
            "budget.eval_every=25", "budget.eval_samples=2000"]


def fashion_main(description: str, variants: dict[str, list[str]]) -> None:
    """The command line of a benchmark in the Fashion-MNIST setting: pick variants, budget, seeds and target."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--budget", type=float, default=3000.0, help="virtual seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.75, help="accuracy target for time-to-accuracy")
    parser.add_argument("--variants", nargs="+", default=list(variants), choices=list(variants))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    run_variants(f"Fashion-MNIST, CNN, high heterogeneity, Dirichlet 0.6, {args.budget:g} virtual s",
                 {v: variants[v] for v in args.variants}, [*fashion_base(args.budget), *args.overrides],
                 args.seeds, args.target, wide_console())


def run_variants(title: str, variants: dict[str, list[str]], base: list[str], seeds: list[int],
                 target: float, console: Console) -> list[dict[str, Any]]:
    """Each variant is a list of `--set` overrides on top of `base`; returns one row per variant."""
    rows = []
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in variants.items():
            results = []
            for seed in seeds:
                cfg = load_config(overrides=[*base, f"budget.target_accuracies=[{target}]", f"experiment.seed={seed}",
                                             "tracking.enabled=false", *overrides])
                console.print(f"[bold]{name}[/] seed {seed} ...")
                result = run_experiment(cfg, output=Path(tmp) / f"{name}-{seed}", console=quiet)
                console.print(f"  final {100 * result['final_accuracy']:.2f} %, wall {result['wall_time_s']:.0f} s")
                results.append(result)
            rows.append({"variant": name, "results": results})
    console.print(table(title, rows, target))
    return rows


def table(title: str, rows: list[dict[str, Any]], target: float) -> Table:
    out = Table(title=title)
    for column in ("variant", "final acc (%)", "best acc (%)", f"time to {100 * target:g} % (s)", "rounds",
                   "client updates", "MB down", "final mean density", "wall (s)"):
        out.add_column(column, justify="right")
    for row in rows:
        results = row["results"]
        reach = [r["time_to_accuracy"][f"{target:g}"] for r in results]
        reached = [t for t in reach if t is not None]
        out.add_row(
            row["variant"],
            _mean_std([100 * r["final_accuracy"] for r in results]),
            _mean_std([100 * r["best_accuracy"] for r in results]),
            (_mean_std(reached, "{:.0f}") if reached else "not reached")
            + (f" ({len(reached)}/{len(reach)})" if len(reached) != len(reach) else ""),
            f"{statistics.mean(r['rounds'] for r in results):.0f}",
            f"{statistics.mean(r['client_updates'] for r in results):.0f}",
            f"{statistics.mean(r['bytes_down'] for r in results) / 2**20:,.0f}",
            f"{statistics.mean(r['history'][-1]['mean_density'] for r in results):.2f}",
            f"{statistics.mean(r['wall_time_s'] for r in results):.0f}",
        )
    return out


def _mean_std(values: list[float], fmt: str = "{:.2f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"
