"""FedGMR against FedAsync, FedAvg and FedGMR without recovery, on real Fashion-MNIST (spec G's comparison).

CNN (LEAF Conv2), 10 clients, `high` heterogeneity, Dirichlet α = 0.6, one virtual-time budget for all.
Usage (about 10 minutes per variant and seed on 2 CPU cores with the defaults):

    python -m benchmarks.fedgmr_vs_baselines [--budget 3000] [--seeds 0] [--target 0.75] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse

from rich.console import Console

from benchmarks.common import fashion_base, run_variants

VARIANTS = {
    "fedgmr": ["algorithm.name=fedgmr"],
    "fedasync": ["algorithm.name=fedasync"],
    "fedavg": ["algorithm.name=fedavg"],
    "fedgmr w/o GMR": ["algorithm.name=fedgmr", "algorithm.recovery.trigger=none"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=3000.0, help="virtual seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.75, help="accuracy target for time-to-accuracy")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    base = [*fashion_base(args.budget), *args.overrides]
    run_variants(f"Fashion-MNIST, CNN, high heterogeneity, Dirichlet 0.6, {args.budget:g} virtual s",
                 {v: VARIANTS[v] for v in args.variants}, base, args.seeds, args.target, Console())


if __name__ == "__main__":
    main()
