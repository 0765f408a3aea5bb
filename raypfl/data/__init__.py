"""Datasets from local files and their partition over clients."""

from raypfl.data.datasets import LOADERS, Dataset, load_dataset
from raypfl.data.partition import partition
from raypfl.data.report import label_counts, partition_table, save_partition_heatmap

__all__ = ["LOADERS", "Dataset", "label_counts", "load_dataset", "partition", "partition_table",
           "save_partition_heatmap"]
