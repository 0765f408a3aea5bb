"""Fingerprints of every shipped config's history, to show that a change leaves results alone.

    python -m benchmarks.histories --out /tmp/before      # on the old code
    python -m benchmarks.histories --out /tmp/after       # on the new code
    cmp /tmp/before/all.json /tmp/after/all.json           # or: diff -r /tmp/before /tmp/after

Each case is a shipped config (the demo, `benchmarks/configs/`, `configs/`, the bases and variants of
`tune_configs/`, every preset and variant) cut to a short budget where the whole one would take long. A
fingerprint is what a run's result says about the simulation (every evaluation without its wall time, density
changes, per-client and per-class counts, traffic), written as canonical JSON: two codes that compute the same
floats write the same bytes. All cases run in one Ray session, one client actor pair.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.output import wide_console
from raypfl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
FASHION_SHORT = ["budget.virtual_time_s=240", "budget.eval_samples=500"]
PAPER_SHORT = ["budget.virtual_time_s=400", "budget.eval_samples=500", "budget.eval_every_s=40"]
DIGITS_SHORT = ["budget.virtual_time_s=300"]

# name → (config file relative to the repository, or None for the defaults; overrides)
CASES: dict[str, tuple[str | None, list[str]]] = {
    "demo": (None, []),
    "w1": ("benchmarks/configs/w1.yaml", ["budget.max_rounds=2"]),
    "cifar10-vgg11": ("configs/cifar10_vgg11_high_noniid.yaml",
                      ["runtime.device=cpu", "budget.virtual_time_s=120", "budget.eval_every=5"]),
    **{f"methods-{name}": ("tune_configs/methods.yaml", [f"algorithm.name={name}"])
       for name in ("fedgmr", "fedavg", "fedasync", "fedbuff", "heterofl")},
    "staleness-hinge": ("tune_configs/staleness.yaml", ["algorithm.staleness.kind=hinge",
                                                        "algorithm.staleness.a=1.0"]),
    "patience-1": ("tune_configs/fedgmr_patience.yaml", ["algorithm.recovery.patience=1"]),
    **{f"digits-{name}": (None, [f"algorithm.name={name}", *DIGITS_SHORT])
       for name in ("prfl", "fedrolex", "fjord")},
    **{f"digits-{name}-{variant}": (None, [f"algorithm.name={name}", f"algorithm.variant={variant}", *DIGITS_SHORT])
       for name, variant in (("heterofl", "aux"), ("fedrolex", "aux_gmr"), ("fjord", "aux_gmr"))},
    "digits-fedgmr-k4-n40": (None, ["clients.num_clients=40", "clients.concurrency=4", *DIGITS_SHORT]),
    "digits-fedbuff-k5-n50": (None, ["algorithm.name=fedbuff", "clients.num_clients=50", "clients.concurrency=5",
                                     *DIGITS_SHORT]),
    "digits-fedavg-k3-n30": (None, ["algorithm.name=fedavg", "clients.num_clients=30", "clients.concurrency=3",
                                    *DIGITS_SHORT]),
    "methods_fashion-fjord": ("tune_configs/methods_fashion.yaml", ["algorithm.name=fjord", *FASHION_SHORT]),
    **{f"prfl_headline-{name}": ("tune_configs/prfl_headline.yaml", [*overrides, *PAPER_SHORT])
       for name, overrides in {
           "prfl": ["algorithm.name=prfl"], "fedasync": ["algorithm.name=fedasync"],
           "fedfix": ["algorithm.name=fedfix"],
           "heterofl-masks": ["algorithm.name=heterofl", "algorithm.variant=masks"],
           "fedavg": ["algorithm.name=fedavg"], "fedgmr": ["algorithm.name=fedgmr"]}.items()},
    **{f"fedgmr_restoration-{name}": ("tune_configs/fedgmr_restoration.yaml", [*overrides, *PAPER_SHORT])
       for name, overrides in {
           "fedgmr": ["algorithm.name=fedgmr"], "fjord": ["algorithm.name=fjord"],
           "gmr-fixed-time": ["algorithm.name=fedgmr", "algorithm.recovery.trigger=time"],
           "gmr-ga": ["algorithm.name=fedgmr", "algorithm.rule=ga"]}.items()},
    **{f"configs-{name}": (f"configs/{name}.yaml", overrides) for name, overrides in {
        "fashion_mnist": FASHION_SHORT, "explicit_classes": DIGITS_SHORT, "concurrency": [],
        "prfl_fashion": PAPER_SHORT, "fedgmr_fashion": PAPER_SHORT}.items()},
    "one_minute-fedgmr": ("tune_configs/one_minute.yaml",
                          ["algorithm.name=fedgmr", "algorithm.recovery.trigger=budget"]),
    "availability-diurnal-fedbuff": (None, ["algorithm.name=fedbuff", "clients.num_clients=40", "clients.concurrency=8",
                                            "clients.availability.kind=diurnal", "clients.availability.day_s=300",
                                            "clients.availability.mean_online_s=30", *DIGITS_SHORT]),
    "availability-diurnal-fedavg": (None, ["algorithm.name=fedavg", "clients.num_clients=40", "clients.concurrency=8",
                                           "algorithm.over_selection=0.25", "algorithm.round_deadline_s=40",
                                           "clients.availability.kind=diurnal", "clients.availability.day_s=300",
                                           "clients.availability.mean_online_s=30", *DIGITS_SHORT]),
}


def base_tree(path: str | None) -> dict[str, Any]:
    """A config file's tree; a sweep file's `base`."""
    if path is None:
        return {}
    from raypfl.config import read_yaml

    tree = read_yaml(ROOT / path)
    if "search_space" not in tree and "variants" not in tree:
        return tree
    base = tree.get("base", {})
    return read_yaml((ROOT / path).parent / base) if isinstance(base, str) else dict(base)


def fingerprint(result: dict[str, Any]) -> dict[str, Any]:
    """What a run's result says about the simulation, without wall-clock times or paths."""
    history = [{k: v for k, v in record.items() if k != "wall_time_s"} for record in result["history"]]
    keep = ("rounds", "client_updates", "bytes_up", "bytes_down", "virtual_time_s", "density_changes", "clients",
            "participation")
    return {"history": history, **{k: result.get(k) for k in keep}}


def write_cifar(folder: Path) -> Path:
    """A small CIFAR-10 python-batches folder (the papers' data cannot be had offline)."""
    rng = np.random.default_rng(0)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": [int(v) for v in rng.integers(0, 10, 40)],
                 b"data": rng.integers(0, 256, size=(40, 3072), dtype=np.uint8)}
        (batches / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for one fingerprint per case and all.json")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="these cases only")
    args = parser.parse_args()
    console = wide_console()
    args.out.mkdir(parents=True, exist_ok=True)

    import ray

    from raypfl.runtime.driver import run_experiment
    from raypfl.runtime.local_ray import start_local_ray

    start_local_ray(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    every: dict[str, Any] = {}
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        cifar = write_cifar(Path(tmp) / "cifar")
        for name in args.only or CASES:
            path, overrides = CASES[name]
            extra = [f"data.data_dir={cifar}"] if name.startswith("cifar10") else []
            cfg = load_config(base=base_tree(path), overrides=[*overrides, *extra, "tracking.enabled=false",
                                                               "runtime.num_workers=2"])
            result = run_experiment(cfg, output=Path(tmp) / name, console=quiet)
            every[name] = fingerprint(result)
            (args.out / f"{name}.json").write_text(json.dumps(every[name], sort_keys=True, indent=1))
            console.print(f"{name}: {result['rounds']} rounds, {result['client_updates']} updates, final "
                          f"{100 * result['final_accuracy']:.2f} %, wall {result['wall_time_s']:.0f} s")
    (args.out / "all.json").write_text(json.dumps(every, sort_keys=True, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
