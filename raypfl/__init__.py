"""raypfl: heterogeneous asynchronous federated learning with pruning and recovery on Ray."""

__version__ = "0.1.0"
