"""GPU check, on a machine with one CUDA GPU where raypfl is importable: the client trainer on CUDA against the CPU
and against itself, and `raypfl run`s whose client actors share the GPU by their classes' GPU fractions.

    python -m benchmarks.gpu_check          # CHECK_DEVICE=cpu python -m benchmarks.gpu_check: a dry run on the CPU

Per job (dense, masked) it prints the CPU-vs-CUDA difference and whether CUDA gives the same floats twice; per run
(FedGMR on `digits`, `high`: the default number of actors, 4, 2, 4 again, 5) the actors' devices and GPU ids, the
processes seen on the GPU, and whether the histories are identical. Five `high` actors ask for 1.05 GPUs: that run
must stop at once with advice.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raypfl.config import load_config
from raypfl.data import load_dataset
from raypfl.fl.jobs import ModelSpec, TrainJob
from raypfl.models import prunable_parameters
from raypfl.runtime.training import ClientTrainer, configure_process, to_numpy

DEVICE = os.environ.get("CHECK_DEVICE", "cuda")
SETTINGS = ["data.dataset=digits", "model.name=cnn", "algorithm.name=fedgmr", "tracking.enabled=false",
            "runtime.checkpoint_every=0", "budget.max_rounds=6", "budget.eval_every=2", f"runtime.device={DEVICE}"]


def check_jobs() -> None:
    configure_process(1)
    cfg = load_config(overrides=["data.dataset=digits", "training.local_steps=20", "training.batch_size=32"])
    data = load_dataset(cfg.data, seed=0)
    spec = ModelSpec("cnn", data.input_shape, data.num_classes)
    torch.manual_seed(0)
    weights = to_numpy(spec.build())
    rng = np.random.default_rng(0)
    mask = {k: rng.random(weights[k].shape) < 0.3 for k in prunable_parameters(spec.build())}
    for name, job_mask in (("dense", None), ("masked 0.3", mask)):
        results = []
        for device in ("cpu", DEVICE, DEVICE):
            trainer = ClientTrainer(spec, data.x_train, data.y_train, [np.arange(len(data.y_train))], cfg.training, 0,
                                    device=device)
            started = time.perf_counter()
            results.append((trainer.train(TrainJob(0, 0, 0, job_mask, 0.05, 20), weights),
                            time.perf_counter() - started))
        (cpu, _), (first, t1), (second, t2) = results
        diff = max(float(np.max(np.abs(cpu.weights[k] - first.weights[k]))) for k in cpu.weights)
        same = all(np.array_equal(first.weights[k], second.weights[k]) for k in first.weights)
        print(f"{name}: loss cpu {cpu.loss:.6f} {DEVICE} {first.loss:.6f}; max |w_cpu - w_{DEVICE}| {diff:.2e}; "
              f"{DEVICE} twice bit-identical: {same}; {DEVICE} {t1:.2f} s / {t2:.2f} s", flush=True)


def gpu_processes(seen: set[str], stop: threading.Event) -> None:
    while not stop.is_set():
        if DEVICE == "cuda":
            listing = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                     capture_output=True, text=True).stdout
            seen.update(line.strip() for line in listing.splitlines() if line.strip())
        stop.wait(1.0)


def run(work: str, tag: str, extra: list[str]) -> list[dict[str, Any]] | None:
    out = f"{work}/{tag}"
    command = [sys.executable, "-m", "raypfl", "run", "--output", out]
    for setting in [*SETTINGS, *extra]:
        command += ["--set", setting]
    seen: set[str] = set()
    stop = threading.Event()
    poller = threading.Thread(target=gpu_processes, args=(seen, stop), daemon=True)
    poller.start()
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    stop.set()
    poller.join()
    wall = time.time() - started
    if proc.returncode != 0:
        print(f"[{tag}] exit {proc.returncode} after {wall:.0f} s: {(proc.stderr or proc.stdout).strip()[-400:]}")
        return None
    result = json.loads(Path(out, "result.json").read_text())
    workers = [(w["worker"], w["device"], w["gpu_ids"], w["local_steps"]) for w in result["workers"]]
    print(f"[{tag}] {wall:.0f} s, final accuracy {result['final_accuracy']:.4f}, processes on the GPU {len(seen)}, "
          f"actors (worker, device, GPU ids, local steps) {workers}", flush=True)
    with open(f"{out}/history.csv") as f:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(f)]


def main() -> None:
    print(f"torch {torch.__version__}, CUDA available {torch.cuda.is_available()}", flush=True)
    check_jobs()
    with tempfile.TemporaryDirectory(prefix="raypfl-gpu-") as work:
        runs = {tag: run(work, tag, extra) for tag, extra in (
            ("default", []), ("4 actors", ["runtime.num_workers=4"]), ("2 actors", ["runtime.num_workers=2"]),
            ("4 actors again", ["runtime.num_workers=4"]), ("5 actors", ["runtime.num_workers=5"]))}
    reference = runs["4 actors"]
    for tag in ("4 actors again", "2 actors", "default"):
        print(f"history of '{tag}' identical to '4 actors': {runs[tag] is not None and runs[tag] == reference}")


if __name__ == "__main__":
    main()
