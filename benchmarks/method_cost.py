"""What the other methods' machinery costs: wall seconds per client update of FedAvg, FedGMR (masked training,
mask rebuilds, client scoring) and HeteroFL (width slicing) on W1's data and local work, 10 clients, `high`, and
the CPU seconds per update of the processes that do the work (the client actors and the aggregator).

    python -m benchmarks.method_cost [--rounds 60] [--methods fedavg fedgmr heterofl] [--source DIR]

Every method trains the same local work per update (19 SGD steps of batch 32 on Fashion-MNIST); FedGMR trains its
sub-models as the dense network under a mask, so its cost per update is FedAvg's plus the machinery. Wall time per
update also counts actors waiting for work: an asynchronous method with 10 clients on 2 actors cannot always keep
both busy (each FedGMR window re-dispatches only the clients it aggregated, and the next window needs their
results), so the machinery's own cost is the CPU column. `--source` runs another checkout of raypfl (e.g. an older
commit: `git worktree add /tmp/old <commit>`) with this environment, for before/after figures. Nothing else may
run meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
from rich.table import Table

from benchmarks.output import wide_console

SETTING = ["data.dataset=fashion_mnist", "data.partition.kind=iid", "model.name=cnn", "clients.num_clients=10",
           "clients.heterogeneity=high", "training.batch_size=32", "training.local_steps=19", "training.lr=0.05",
           "budget.virtual_time_s=1000000", "tracking.enabled=false", "runtime.checkpoint_every=0"]


def measure(method: str, rounds: int, source: Path | None, work: Path) -> dict[str, float]:
    out = work / method
    command = [sys.executable, "-m", "raypfl", "run", "--output", str(out)]
    for setting in [*SETTING, f"algorithm.name={method}", f"budget.max_rounds={rounds}",
                    f"budget.eval_every={rounds}"]:
        command += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(source)} if source is not None else None
    proc = subprocess.Popen(command, cwd=source or Path(__file__).parent.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu: dict[int, float] = {}  # worker process → its CPU seconds when last seen
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_workers, args=(psutil.Process(proc.pid), cpu, stop), daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    result = json.loads((out / "result.json").read_text())
    wall = result["wall_time_s"]  # the simulation's own wall clock: comparable between versions
    updates = result["client_updates"]
    return {"rounds": result["rounds"], "updates": updates, "wall": wall, "rounds_per_s": result["rounds"] / wall,
            "s_per_update": wall / updates, "cpu_per_update": sum(cpu.values()) / updates}


def _sample_workers(root: psutil.Process, cpu: dict[int, float], stop: threading.Event) -> None:
    """Every 0.2 s, the CPU seconds of each client actor and aggregator process of the run."""
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            for proc in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    name = proc.name() + " ".join(proc.cmdline()[:1])
                    if "ClientActor" in name or "AggregatorActor" in name:
                        times = proc.cpu_times()
                        cpu[proc.pid] = times.user + times.system
        stop.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--methods", nargs="+", default=["fedavg", "fedgmr", "heterofl"])
    parser.add_argument("--source", type=Path, help="a checkout of raypfl to run instead of this one")
    args = parser.parse_args()
    console = wide_console()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="raypfl-cost-") as tmp:
        for method in args.methods:
            console.print(f"{method} ...")
            rows[method] = measure(method, args.rounds, args.source.resolve() if args.source else None, Path(tmp))
    table = Table(title=f"W1 data and local work, 10 clients, high, {args.rounds} aggregations"
                        + (f" ({args.source})" if args.source else ""))
    for column in ("method", "rounds", "client updates", "wall (s)", "rounds/s", "s per update", "vs fedavg",
                   "CPU s per update", "vs fedavg"):
        table.add_column(column, justify="right")
    base = rows.get("fedavg")
    for method, r in rows.items():
        table.add_row(method, str(r["rounds"]), str(r["updates"]), f"{r['wall']:.1f}", f"{r['rounds_per_s']:.2f}",
                      f"{r['s_per_update']:.3f}", f"{r['s_per_update'] / base['s_per_update']:.2f}" if base else "-",
                      f"{r['cpu_per_update']:.3f}",
                      f"{r['cpu_per_update'] / base['cpu_per_update']:.2f}" if base else "-")
    console.print(table)


if __name__ == "__main__":
    main()
