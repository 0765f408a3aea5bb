"""Does asynchrony pay off under device heterogeneity? FedAvg vs FedAsync vs FedBuff on the same virtual clock.

Runs each preset on the same data, partition, heterogeneity level, seed(s) and virtual-time budget, and prints
final accuracy and time-to-accuracy. Usage:

    python benchmarks/async_vs_sync.py [--dataset digits] [--budget 1500] [--seeds 0 1] [--target 0.9]
                                       [--set KEY=VALUE ...]

Takes about 5 minutes for digits with one seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from raypfl.config import load_config
from raypfl.runtime.driver import run_experiment

ALGORITHMS = ("fedavg", "fedasync", "fedbuff")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--heterogeneity", default="high")
    parser.add_argument("--budget", type=float, default=1500.0, help="virtual seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.9, help="accuracy target for time-to-accuracy")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    console = Console()
    quiet = Console(quiet=True)
    table = Table(title=f"{args.dataset}, {args.heterogeneity} heterogeneity, {args.budget:g} virtual s, "
                        f"seeds {args.seeds}")
    for column in ("algorithm", "final acc (%)", "best acc (%)", f"time to {100 * args.target:g} % (s)",
                   "rounds", "client updates", "wall (s)"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in args.algorithms:
            results = []
            for seed in args.seeds:
                cfg = load_config(overrides=[
                    f"data.dataset={args.dataset}", f"clients.heterogeneity={args.heterogeneity}",
                    f"algorithm.name={algorithm}", f"budget.virtual_time_s={args.budget}",
                    f"budget.target_accuracies=[{args.target}]", f"experiment.seed={seed}",
                    f"experiment.name=bench-{algorithm}", "tracking.enabled=false", *args.overrides])
                console.print(f"running {algorithm} seed {seed} ...")
                results.append(run_experiment(cfg, output=Path(tmp) / f"{algorithm}-{seed}", console=quiet))
            reach = [r["time_to_accuracy"][f"{args.target:g}"] for r in results]
            reached = [t for t in reach if t is not None]
            table.add_row(
                algorithm,
                _mean_std([100 * r["final_accuracy"] for r in results]),
                _mean_std([100 * r["best_accuracy"] for r in results]),
                (_mean_std(reached, "{:.0f}") if reached else "not reached")
                + (f" ({len(reached)}/{len(reach)})" if len(reached) != len(reach) else ""),
                f"{statistics.mean(r['rounds'] for r in results):.0f}",
                f"{statistics.mean(r['client_updates'] for r in results):.0f}",
                f"{statistics.mean(r['wall_time_s'] for r in results):.0f}",
            )
    console.print(table)


def _mean_std(values: list[float], fmt: str = "{:.2f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


if __name__ == "__main__":
    main()
