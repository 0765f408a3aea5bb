"""FedGMR against FedAsync, FedAvg and FedGMR without recovery, on real Fashion-MNIST (spec G's comparison).

CNN (LEAF Conv2), 10 clients, `high` heterogeneity, Dirichlet α = 0.6, one virtual-time budget for all.
Usage (about 10 minutes per variant and seed on 2 CPU cores with the defaults):

    python -m benchmarks.fedgmr_vs_baselines [--budget 3000] [--seeds 0] [--target 0.75] [--set KEY=VALUE ...]
"""

from __future__ import annotations

from benchmarks.common import fashion_main

VARIANTS = {
    "fedgmr": ["algorithm.name=fedgmr"],
    "fedasync": ["algorithm.name=fedasync"],
    "fedavg": ["algorithm.name=fedavg"],
    "fedgmr w/o GMR": ["algorithm.name=fedgmr", "algorithm.recovery.trigger=none"],
}


def main() -> None:
    fashion_main(__doc__.splitlines()[0], VARIANTS)


if __name__ == "__main__":
    main()
