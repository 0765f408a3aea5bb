"""raypfl against the physical limit: `raypfl run CONFIG` and a bare PyTorch loop doing the same SGD work
(benchmarks/bare_loop.py), run as whole processes in interleaved pairs on this machine.

    python -m benchmarks.speed [--pairs 3] [--workload w1|w2 | --config FILE] [--profile DIR] [--flower PYTHON]

W1 (benchmarks/configs/w1.yaml) is the papers' kind of work: few clients, much local work each. W2 (w2.yaml) is
cross-device: many clients, a few steps each, a large model, FedBuff with 100 in flight.

For each pair it prints both wall times and their ratio, the median time of a round (median of the per-round wall
times: training, transfers, aggregation, evaluation), and raypfl's time split into start-up (process start to the
first training step), rounds and shut-down; then the medians over the pairs, and the per-round limit of the
machine at that hour (benchmarks/step_limit.py: an SGD step as the bare loop takes it against two client actors'
steps at once). Nothing else may run meanwhile: two cores are easily shared. A warm-up run of each (not timed)
fills the page cache and creates the MLflow database, as on a machine that has run raypfl before. `--profile DIR`
records one more raypfl run with py-spy (every process of the run) into DIR/raypfl.svg. `--flower PYTHON` adds the
same experiment on Flower's simulation runtime (benchmarks/flower_w1.py, run with PYTHON, the interpreter of an
environment with Flower) to every pair, each of the three going first in turn, and a second table comparing it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.output import wide_console
from benchmarks.step_limit import step_limit
from raypfl.config import Config, load_config

CONFIGS = Path(__file__).parent / "configs"
W1 = CONFIGS / "w1.yaml"


def client_updates(cfg: Config) -> int:
    """Updates a run of `budget.max_rounds` aggregations makes: a count trigger's buffer per aggregation, else every
    client in flight."""
    assert cfg.budget.max_rounds is not None
    per_round = cfg.algorithm.buffer_size if cfg.algorithm.trigger == "count" else \
        (cfg.clients.concurrency or cfg.clients.num_clients)
    return cfg.budget.max_rounds * per_round


def run_bare(config: Path, cwd: Path) -> dict[str, Any]:
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "benchmarks.bare_loop", str(config)], cwd=Path(__file__).parent.parent,
                         capture_output=True, text=True, check=True).stdout
    wall = time.time() - started
    report = json.loads(out.strip().splitlines()[-1])
    return {"wall": wall, "round": report["round_s_median"], "steps": report["steps"],
            "accuracy": report["evaluations"][-1]["accuracy"]}


def run_raypfl(config: Path, cwd: Path, name: str, prefix: list[str] | None = None) -> dict[str, Any]:
    raypfl = Path(sys.executable).parent / "raypfl"
    command = [*(prefix or []), str(raypfl), "run", str(config), "--output", str(cwd / name)]
    started = time.time()
    subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True)
    ended = time.time()
    result = json.loads((cwd / name / "result.json").read_text())
    timing = result["timing"]
    return {"wall": ended - started, "round": timing["round_s_median"], "startup": timing["first_step_at"] - started,
            "rounds": timing["simulated_at"] - timing["first_step_at"], "shutdown": ended - timing["simulated_at"],
            "accuracy": result["final_accuracy"]}


def run_flower(python: Path, config: Path) -> dict[str, Any]:
    started = time.time()
    out = subprocess.run([str(python), "-m", "benchmarks.flower_w1", str(config)], cwd=Path(__file__).parent.parent,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                         capture_output=True, text=True, check=True).stdout
    wall = time.time() - started
    report = json.loads(out.strip().splitlines()[-1])
    return {"wall": wall, "round": report["round_s_median"], "startup": report["first_step_at"] - started,
            "accuracy": report["evaluations"][-1]["accuracy"]}


def _has_flower(python: Path) -> bool:
    try:
        return subprocess.run([str(python), "-c", "import flwr.simulation, torch"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--workload", choices=("w1", "w2"), help="a shipped workload (default: w1)")
    parser.add_argument("--config", type=Path, help="another experiment config (FedAvg or FedBuff, max_rounds set)")
    parser.add_argument("--profile", type=Path, help="also record a raypfl run with py-spy into this folder")
    parser.add_argument("--flower", type=Path, metavar="PYTHON",
                        help="also run the config on Flower's simulation runtime with this interpreter (an "
                             "environment with flwr[simulation]: benchmarks/flower_w1.py)")
    args = parser.parse_args()
    if args.flower is not None and not _has_flower(args.flower):
        parser.error(f"--flower: {args.flower} is not the Python of an environment with flwr[simulation] and torch")
    if args.workload and args.config:
        parser.error("give --workload or --config, not both")
    config = (args.config or CONFIGS / f"{args.workload or 'w1'}.yaml").resolve()
    cfg = load_config(config)
    if args.flower is not None and cfg.algorithm.name != "fedavg":
        parser.error("--flower runs FedAvg workloads (W1) only")
    console = wide_console()
    steps = client_updates(cfg) * cfg.training.local_steps
    with tempfile.TemporaryDirectory(prefix="raypfl-speed-") as tmp:
        work = Path(tmp)
        console.print("warm-up (not timed) ...")
        run_bare(config, work)
        run_raypfl(config, work, "warmup")
        runners = {"bare": lambda pair: run_bare(config, work),
                   "raypfl": lambda pair: run_raypfl(config, work, f"pair{pair}")}
        if args.flower is not None:
            run_flower(args.flower, config)
            runners["flower"] = lambda pair: run_flower(args.flower, config)
        rows = []
        for pair in range(args.pairs):
            names = list(runners)
            order = names[pair % len(names):] + names[:pair % len(names)]  # each goes first in turn
            got = {what: runners[what](pair) for what in order}
            rows.append(got)
            b, r = got["bare"], got["raypfl"]
            console.print(f"pair {pair + 1}: bare {b['wall']:.1f} s, raypfl {r['wall']:.1f} s "
                          f"(ratio {r['wall'] / b['wall']:.3f}); round {b['round']:.2f} vs {r['round']:.2f} s"
                          + (f"; Flower {got['flower']['wall']:.1f} s, round {got['flower']['round']:.2f} s, "
                             f"start-up {got['flower']['startup']:.1f} s" if "flower" in got else ""))
        limit = step_limit(config)
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            pyspy = Path(sys.executable).parent / "py-spy"
            run_raypfl(config, work, "profiled", [str(pyspy), "record", "--subprocesses", "-r", "50", "-o",
                                                  str((args.profile / "raypfl.svg").resolve()), "--"])
            console.print(f"profile written to {args.profile / 'raypfl.svg'}")
    console.print(table(rows, steps, config))
    if args.flower is not None:
        console.print(flower_table(rows, steps, config))
    console.print(f"per-round limit of this machine now: a round can take at best {limit['round_ratio']:.3f} of the "
                  f"bare loop's (bare {limit['bare_ms']:.1f} ms per step, raypfl's actors {limit['actor_ms']:.1f} ms "
                  "each, two at once)")


def table(rows: list[dict[str, dict[str, Any]]], steps: int, config: Path) -> Table:
    out = Table(title=f"{config.name}: {steps} SGD steps, whole processes, interleaved pairs")
    for column in ("pair", "bare (s)", "raypfl (s)", "ratio", "bare round (s)", "raypfl round (s)", "round ratio",
                   "steps/s bare", "steps/s raypfl", "start-up (s)", "rounds (s)", "shut-down (s)"):
        out.add_column(column, justify="right")

    def cells(b: dict[str, Any], r: dict[str, Any]) -> list[str]:
        return [f"{b['wall']:.1f}", f"{r['wall']:.1f}", f"{r['wall'] / b['wall']:.3f}", f"{b['round']:.2f}",
                f"{r['round']:.2f}", f"{r['round'] / b['round']:.3f}", f"{steps / b['wall']:.1f}",
                f"{steps / r['wall']:.1f}", f"{r['startup']:.1f}", f"{r['rounds']:.1f}", f"{r['shutdown']:.1f}"]

    for k, row in enumerate(rows):
        out.add_row(str(k + 1), *cells(row["bare"], row["raypfl"]))
    median = {what: {key: statistics.median(row[what][key] for row in rows) for key in rows[0][what]}
              for what in ("bare", "raypfl")}
    ratios = [row["raypfl"]["wall"] / row["bare"]["wall"] for row in rows]
    round_ratios = [row["raypfl"]["round"] / row["bare"]["round"] for row in rows]
    last = cells(median["bare"], median["raypfl"])
    last[2], last[5] = f"{statistics.median(ratios):.3f}", f"{statistics.median(round_ratios):.3f}"
    out.add_row("median", *last)
    return out


def flower_table(rows: list[dict[str, dict[str, Any]]], steps: int, config: Path) -> Table:
    out = Table(title=f"{config.name} on Flower's simulation runtime, in the same interleaved runs")
    for column in ("run", "bare (s)", "Flower (s)", "Flower / bare", "raypfl / Flower", "Flower round (s)",
                   "round: Flower / bare", "steps/s Flower", "start-up (s)", "accuracy Flower / raypfl"):
        out.add_column(column, justify="right")
    keys = ("bare", "raypfl", "flower")

    def cells(b: dict[str, Any], r: dict[str, Any], f: dict[str, Any]) -> list[str]:
        return [f"{b['wall']:.1f}", f"{f['wall']:.1f}", f"{f['wall'] / b['wall']:.3f}", f"{r['wall'] / f['wall']:.3f}",
                f"{f['round']:.2f}", f"{f['round'] / b['round']:.3f}", f"{steps / f['wall']:.1f}",
                f"{f['startup']:.1f}", f"{f['accuracy']:.4f} / {r['accuracy']:.4f}"]

    for k, row in enumerate(rows):
        out.add_row(str(k + 1), *cells(*(row[what] for what in keys)))
    median = {what: {key: statistics.median(row[what][key] for row in rows) for key in rows[0][what]}
              for what in keys}
    last = cells(*(median[what] for what in keys))
    last[2] = f"{statistics.median(row['flower']['wall'] / row['bare']['wall'] for row in rows):.3f}"
    last[3] = f"{statistics.median(row['raypfl']['wall'] / row['flower']['wall'] for row in rows):.3f}"
    last[5] = f"{statistics.median(row['flower']['round'] / row['bare']['round'] for row in rows):.3f}"
    out.add_row("median", *last)
    return out


if __name__ == "__main__":
    main()
