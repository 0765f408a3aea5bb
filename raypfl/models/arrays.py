"""A model's state as NumPy arrays, the form in which weights travel between the server and the clients."""

from __future__ import annotations

import numpy as np

Weights = dict[str, np.ndarray]  # state-dict name → tensor
Mask = dict[str, np.ndarray]  # state-dict name → boolean array of the tensor's shape; absent: the whole tensor
