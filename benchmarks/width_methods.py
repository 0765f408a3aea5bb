"""FedGMR against the width-sliced methods HeteroFL, FedRolex and FjORD (and one +Aux+GMR variant) on equal terms:
real Fashion-MNIST, the CNN, 10 clients, `high` heterogeneity, Dirichlet α = 0.6, one virtual-time budget.

    python -m benchmarks.width_methods [--budget 3000] [--seeds 0] [--target 0.75] [--set KEY=VALUE ...]
"""

from __future__ import annotations

from benchmarks.common import fashion_main

VARIANTS = {
    "fedgmr": ["algorithm.name=fedgmr"],
    "heterofl": ["algorithm.name=heterofl"],
    "fedrolex": ["algorithm.name=fedrolex"],
    "fjord": ["algorithm.name=fjord"],
    "heterofl+aux": ["algorithm.name=heterofl", "algorithm.variant=aux"],
    "heterofl+aux+gmr": ["algorithm.name=heterofl", "algorithm.variant=aux_gmr"],
}


def main() -> None:
    fashion_main(__doc__.splitlines()[0], VARIANTS)


if __name__ == "__main__":
    main()
