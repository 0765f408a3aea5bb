"""Look at a partition: per-client sizes and label histograms (console), clients × classes heatmap (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from raypfl.data.datasets import Dataset


def label_counts(dataset: Dataset, parts: list[np.ndarray]) -> np.ndarray:
    """clients × classes matrix of sample counts."""
    return np.stack([np.bincount(dataset.y_train[p], minlength=dataset.num_classes) for p in parts])


def partition_table(dataset: Dataset, parts: list[np.ndarray]) -> Table:
    counts = label_counts(dataset, parts)
    table = Table(title=f"{dataset.name}: {len(dataset.y_train)} training samples over {len(parts)} clients")
    table.add_column("client", justify="right")
    table.add_column("samples", justify="right")
    table.add_column("labels", justify="right")
    histogram = "samples per class" if dataset.num_classes <= 10 else "top classes (class:count)"
    table.add_column(histogram)
    width = len(str(int(counts.max(initial=0))))
    for client, row in enumerate(counts):
        if dataset.num_classes <= 10:
            cells = " ".join(f"{c:>{width}d}" for c in row)
        else:
            top = np.argsort(-row, kind="stable")[:6]
            cells = " ".join(f"{k}:{row[k]}" for k in top if row[k] > 0)
        table.add_row(str(client), str(int(row.sum())), str(int((row > 0).sum())), cells)
    return table


def save_partition_heatmap(path: Path, dataset: Dataset, parts: list[np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = label_counts(dataset, parts)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * dataset.num_classes + 2), max(3.0, 0.3 * len(parts) + 1.5)))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(f"{dataset.name}: samples per client and class")
    if counts.size <= 400:
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value < counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax, label="samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
