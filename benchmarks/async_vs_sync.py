"""Does asynchrony pay off under device heterogeneity? FedAvg vs FedAsync vs FedBuff on the same virtual clock.

Same data, partition, heterogeneity level, seeds and virtual-time budget for every preset; prints final
accuracy and time-to-accuracy. Usage (about 4 minutes for digits and one seed on 2 CPU cores):

    python -m benchmarks.async_vs_sync [--dataset digits] [--budget 1500] [--seeds 0 1] [--target 0.9]
"""

from __future__ import annotations

import argparse

from benchmarks.common import run_variants
from benchmarks.output import wide_console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--heterogeneity", default="high")
    parser.add_argument("--budget", type=float, default=1500.0, help="virtual seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.9, help="accuracy target for time-to-accuracy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    base = [f"data.dataset={args.dataset}", f"clients.heterogeneity={args.heterogeneity}",
            f"budget.virtual_time_s={args.budget}", *args.overrides]
    variants = {name: [f"algorithm.name={name}"] for name in ("fedavg", "fedasync", "fedbuff")}
    run_variants(f"{args.dataset}, {args.heterogeneity} heterogeneity, {args.budget:g} virtual s", variants, base,
                 args.seeds, args.target, wide_console())


if __name__ == "__main__":
    main()
