"""Memory and speed against the population size: the same K clients in flight out of N = 100, 1,000, 10,000.

    python -m benchmarks.scale [--populations 100 1000 10000] [--concurrency 100] [--methods fedasync fedgmr]
                               [--aggregations 200] [--set KEY=VALUE ...]
    python -m benchmarks.scale --cross-device [--breakdown]

`--cross-device` is FedBuff's setting at scale: 1,000 clients in flight out of N = 10,000 and 1,000,000, a buffer of
100, 100 aggregations (10,000 client updates), every client drawing 6 samples of its own (`data.partition.kind:
sampled`, so the population is not bounded by the data), one evaluation at the start and one at the end.

Each cell is one `raypfl run` (Fashion-MNIST, the `cnn`, 6.6 M parameters) stopped after `--aggregations`
aggregations. Once a second the benchmark sums the proportional set size (PSS: shared pages split between the
processes that map them) of every process the run started — the driver, Ray's own processes, the client actors
and the aggregator — and reports the peak, with the wall time and client updates per wall second (between the
first training step and the last aggregation). `--breakdown` also shows where the peak is, by process and kind of
memory (Ray's object store is shared memory: its pages count in the processes that wrote or read them). Nothing
else may run meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from rich.table import Table

from benchmarks.output import wide_console

GiB = 2**30


def _tree(root: psutil.Process) -> list[psutil.Process]:
    """`root` and all its descendants (none once it has gone)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)  # processes that vanish meanwhile: 0


def tree_pss(root: psutil.Process) -> int:
    """Bytes of PSS of `root` and all its descendants."""
    total = 0
    for proc in _tree(root):
        with contextlib.suppress(*_GONE):
            total += proc.memory_full_info().pss
    return total


def pss_by_process(root: psutil.Process) -> dict[str, dict[str, int]]:
    """PSS of `root` and its descendants, by process and kind of mapping: `shm` (Ray's object store, shared
    memory), `anon` (heaps), `files` (libraries and other files)."""
    out: dict[str, dict[str, int]] = {}
    for proc in _tree(root):
        with contextlib.suppress(*_GONE):
            kinds = {"shm": 0, "anon": 0, "files": 0}
            for m in proc.memory_maps(grouped=True):
                kind = "shm" if m.path.startswith("/dev/shm") else "files" if m.path.startswith("/") else "anon"
                kinds[kind] += m.pss
            out[f"{proc.name()} ({proc.pid})"] = kinds
    return out


def run_cell(n: int, k: int, method: str, aggregations: int, extra: list[str], work: Path,
             breakdown: bool = False) -> dict[str, Any]:
    out = work / f"{method}-{n}"
    settings = ["data.dataset=fashion_mnist", "model.name=cnn", f"clients.num_clients={n}",
                f"clients.concurrency={k}", f"algorithm.name={method}", f"budget.max_rounds={aggregations}",
                "budget.virtual_time_s=1000000000", *extra]
    command = [str(Path(sys.executable).parent / "raypfl"), "run", "--output", str(out)]
    for setting in settings:
        command += ["--set", setting]
    started = time.time()
    proc = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    at_peak: dict[str, dict[str, int]] = {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, at_peak
        while not stop.is_set():
            if breakdown:  # slower to read: every 3 s
                processes = pss_by_process(root)
                total = sum(sum(kinds.values()) for kinds in processes.values())
                if total > peak:
                    peak, at_peak = total, processes
                stop.wait(3.0)
            else:
                peak = max(peak, tree_pss(root))
                stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"{method} N={n} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    result = json.loads((out / "result.json").read_text())
    timing = result["timing"]
    busy = timing["simulated_at"] - timing["first_step_at"]
    return {"n": n, "k": k, "method": method, "wall": wall, "updates": result["client_updates"],
            "updates_per_s": result["client_updates"] / busy, "peak_gib": peak / GiB,
            "participants": sum(c["participants"] for c in result["participation"].values()),
            "at_peak": at_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=["fedasync", "fedgmr"])
    parser.add_argument("--aggregations", type=int, default=200)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--breakdown", action="store_true",
                        help="also give the peak's PSS by process and kind of memory (sampled every 3 s)")
    parser.add_argument("--cross-device", action="store_true",
                        help="FedBuff, K = 1,000 of N = 10,000 and 1,000,000, buffer 100, 100 aggregations")
    args = parser.parse_args()
    if args.cross_device:
        args.populations, args.concurrency = [10_000, 1_000_000], 1000
        args.methods, args.aggregations = ["fedbuff"], 100
        args.overrides = ["algorithm.buffer_size=100", "data.partition.kind=sampled",
                          "data.partition.samples_per_client=6", "budget.eval_every=100", *args.overrides]
    console = wide_console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="raypfl-scale-") as tmp:
        for method in args.methods:
            for n in args.populations:
                console.print(f"{method}, N = {n:,}, K = {args.concurrency} ...")
                row = run_cell(n, args.concurrency, method, args.aggregations, args.overrides, Path(tmp),
                               args.breakdown)
                console.print(f"  {row['wall']:.0f} s, {row['updates_per_s']:.1f} updates/s, peak PSS "
                              f"{row['peak_gib']:.2f} GiB")
                if args.breakdown:
                    console.print(breakdown_table(row["at_peak"]))
                rows.append(row)
    out = Table(title=f"Fashion-MNIST, cnn, {args.aggregations} aggregations, K = {args.concurrency} in flight")
    for column in ("N", "K", "method", "wall (s)", "client updates", "clients that trained", "updates/s",
                   "peak PSS (GiB)"):
        out.add_column(column, justify="right")
    for r in rows:
        out.add_row(f"{r['n']:,}", str(r["k"]), r["method"], f"{r['wall']:.0f}", str(r["updates"]),
                    f"{r['participants']:,}", f"{r['updates_per_s']:.1f}", f"{r['peak_gib']:.2f}")
    console.print(out)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


def breakdown_table(processes: dict[str, dict[str, int]]) -> Table:
    out = Table(title="at the peak: PSS by process (GiB)")
    for column in ("process", "object store (shm)", "heap (anon)", "files", "total"):
        out.add_column(column, justify="left" if column == "process" else "right")
    ranked = sorted(processes.items(), key=lambda item: -sum(item[1].values()))
    for name, kinds in ranked[:8]:
        out.add_row(name, *(f"{kinds[k] / GiB:.2f}" for k in ("shm", "anon", "files")),
                    f"{sum(kinds.values()) / GiB:.2f}")
    rest = ranked[8:]
    if rest:
        out.add_row(f"{len(rest)} others", *(f"{sum(kinds[k] for _, kinds in rest) / GiB:.2f}"
                                             for k in ("shm", "anon", "files")),
                    f"{sum(sum(kinds.values()) for _, kinds in rest) / GiB:.2f}")
    return out


if __name__ == "__main__":
    main()
