"""Evaluation split over workers: batch-aligned ranges of the test set, and their sums taken in batch order, so that
any split gives the same numbers as one pass (pure: no PyTorch)."""

from __future__ import annotations


def eval_splits(samples: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) ranges that split `samples` test samples over `parts` workers at batch boundaries."""
    batches = -(-samples // batch_size)
    per = -(-batches // max(1, parts))
    return [(b * batch_size, min(samples, (b + per) * batch_size)) for b in range(0, batches, per)]


def summarise_batches(batches: list[tuple[int, float]], samples: int) -> tuple[float, float]:
    """(accuracy, mean loss) from per-batch (correct, summed loss), the losses added in batch order."""
    correct, total_loss = 0, 0.0
    for right, loss in batches:
        correct += right
        total_loss += loss
    return correct / samples, total_loss / samples
