"""Clients that come and go: FedAvg, FedBuff, FedAsync and FedGMR on Fashion-MNIST with a generated diurnal
availability (about 30 % of clients online on average, one virtual day per budget) against always-online
clients, the same budget and seeds.

    python -m benchmarks.availability [--budget 4000] [--seeds 0] [--methods fedavg fedbuff fedasync fedgmr]

Fifty clients under `high` heterogeneity, IID; ten at a time (sampled per round by FedAvg, which over-selects
by 30 % and aggregates a round at the latest 300 virtual s after dispatch; kept in flight by the others); the
papers' FedGMR with its restoration scaled to the budget (`recovery.trigger: budget`). Prints reported and final
accuracy, updates completed and dropped, and the client-seconds and megabytes that dropped jobs wasted.
"""

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

BASE = ["data.dataset=fashion_mnist", "model.name=cnn", "clients.num_clients=50", "clients.concurrency=10",
        "clients.heterogeneity=high", "budget.eval_samples=2000", "tracking.enabled=false",
        "runtime.checkpoint_every=0"]
METHOD = {"fedavg": ["algorithm.name=fedavg", "algorithm.over_selection=0.3", "algorithm.round_deadline_s=300"],
          "fedbuff": ["algorithm.name=fedbuff"], "fedasync": ["algorithm.name=fedasync"],
          "fedgmr": ["algorithm.name=fedgmr", "algorithm.recovery.trigger=budget"]}


def diurnal(budget: float) -> list[str]:
    return ["clients.availability.kind=diurnal", "clients.availability.share=0.3",
            "clients.availability.mean_online_s=600",
            f"clients.availability.day_s={budget}", f"clients.availability.peak_s={budget / 2}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=4000.0, help="virtual seconds per run (one virtual day)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHOD), choices=list(METHOD))
    args = parser.parse_args()
    console = wide_console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="raypfl-availability-") as tmp:
        for method in args.methods:
            for availability, extra in (("always", []), ("diurnal 30 %", diurnal(args.budget))):
                results = []
                for seed in args.seeds:
                    cfg = load_config(overrides=[*BASE, *METHOD[method], *extra, f"experiment.seed={seed}",
                                                 f"budget.virtual_time_s={args.budget}",
                                                 f"budget.eval_every_s={args.budget / 40}"])
                    out = Path(tmp) / f"{method}-{availability.split()[0]}-{seed}"
                    console.print(f"{method}, {availability}, seed {seed} ...")
                    results.append(run_experiment(cfg, output=out, console=Console(quiet=True)))
                rows.append(row(method, availability, results))
    console.print(table(rows, args.budget, args.seeds))


def row(method: str, availability: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str, scale: float = 1.0) -> float:
        return statistics.mean(scale * float(r[key]) for r in results)

    online = [statistics.mean(h["online_share"].values()) for r in results for h in r["history"]
              if h.get("online_share")]
    return {"method": method, "availability": availability, "reported": mean("reported_accuracy", 100),
            "final": mean("final_accuracy", 100), "updates": mean("client_updates"),
            "dropped": mean("dropped_updates"), "wasted_s": mean("wasted_client_seconds"),
            "wasted_mb": mean("wasted_bytes", 2**-20), "online": 100 * statistics.mean(online) if online else 100.0}


def table(rows: list[dict[str, Any]], budget: float, seeds: list[int]) -> Table:
    out = Table(title=f"Fashion-MNIST, cnn, 50 clients (10 at a time), {budget:g} virtual s, seeds "
                      f"{', '.join(map(str, seeds))}")
    for column in ("method", "availability", "mean online (%)", "reported acc (%)", "final acc (%)",
                   "updates completed", "updates dropped", "wasted client-s", "wasted MB"):
        out.add_column(column, justify="right")
    for r in rows:
        out.add_row(r["method"], r["availability"], f"{r['online']:.0f}", f"{r['reported']:.2f}", f"{r['final']:.2f}",
                    f"{r['updates']:,.0f}", f"{r['dropped']:,.0f}", f"{r['wasted_s']:,.0f}", f"{r['wasted_mb']:,.0f}")
    return out


if __name__ == "__main__":
    main()
