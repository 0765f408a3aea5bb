"""The per-round limit of a FedAvg workload on this machine: one SGD step as the bare loop takes it against the
same step as raypfl's two client actors take it.

The bare loop (benchmarks/bare_loop.py) runs one process with PyTorch's default threads and memory layout and
`torch.optim.SGD`; raypfl's client actors run one thread each, channels-last, the SGD update fused into
backward, two processes at once. A round of raypfl can take at best (pair's time per step / 2) / (bare time per
step) of the bare loop's round: that ratio is printed. The steps use the config's model, batch size and real
training batches.

    python -m benchmarks.step_limit [CONFIG] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

W1 = Path(__file__).parent / "configs" / "w1.yaml"


def measure(config: Path, steps: int, how: str) -> float:
    """Milliseconds per step in this process; `how` is `bare` or `actor`."""
    import torch

    from raypfl.config import load_config
    from raypfl.data import load_dataset
    from raypfl.fl.jobs import ModelSpec
    from raypfl.runtime.training import SGD, configure_process, loss_fn, memory_layout

    cfg = load_config(config)
    data = load_dataset(cfg.data, seed=cfg.experiment.seed)
    bs = cfg.training.batch_size
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    torch.manual_seed(cfg.experiment.seed)
    model = ModelSpec(cfg.model.name, data.input_shape, data.num_classes).build()
    layout = torch.contiguous_format
    if how == "actor":
        configure_process(1)
        layout = memory_layout(model, torch.device("cpu"))
        model = model.to(memory_format=layout)
        optimizer: Any = SGD(list(model.parameters()), lr=cfg.training.lr)
        optimizer.fuse()  # as the client trainer takes its steps: each update inside backward
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.training.lr)
    loss = loss_fn(cfg.training.loss, data.num_classes)
    model.train()

    def step(k: int) -> None:
        lo = (k * bs) % (len(y) - bs)
        optimizer.zero_grad()
        loss(model(x[lo:lo + bs].contiguous(memory_format=layout)), y[lo:lo + bs]).backward()
        if how == "bare":
            optimizer.step()

    for k in range(20):
        step(k)
    started = time.perf_counter()
    for k in range(steps):
        step(k)
    return 1000 * (time.perf_counter() - started) / steps


def _spawn(config: Path, steps: int, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.step_limit", str(config), "--steps", str(steps),
                             "--measure", how], cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, text=True)


def _value(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"step measurement failed with exit code {proc.returncode}")
    return float(json.loads(out.strip().splitlines()[-1])["ms_per_step"])


def step_limit(config: Path = W1, steps: int = 300) -> dict[str, float]:
    """Bare ms per step, each actor's ms per step with two at once, and the per-round ratio they allow."""
    bare = _value(_spawn(config, steps, "bare"))
    pair = [_spawn(config, steps, "actor") for _ in range(2)]
    actor = sum(_value(p) for p in pair) / 2
    return {"bare_ms": bare, "actor_ms": actor, "round_ratio": actor / 2 / bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, default=W1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--measure", choices=("bare", "actor"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps({"ms_per_step": measure(args.config.resolve(), args.steps, args.measure)}))
        return
    got = step_limit(args.config.resolve(), args.steps)
    print(f"bare loop {got['bare_ms']:.1f} ms per step; raypfl's actors {got['actor_ms']:.1f} ms each, two at once; "
          f"a round can take at best {got['round_ratio']:.3f} of the bare loop's")


if __name__ == "__main__":
    main()
