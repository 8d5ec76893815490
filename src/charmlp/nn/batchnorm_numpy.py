"""BatchNorm1d's eval forward in NumPy (torch-free, for sampling), with the running statistics.
(`numpy_model.Net` folds a BatchNorm1d into the Linear before it: then this never runs.)"""

from __future__ import annotations

import numpy as np

from .layernorm_numpy import NORM_TENSORS, norm_check
from .module_numpy import Cache, Kind, Op


def batchnorm(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    t = op.t  # eval: y = γ·(x − μ)/√(σ² + ε) + β with the running μ, σ² (in place on one fresh array)
    y = x - t["running_mean"]
    y *= 1 / np.sqrt(t["running_var"] + op.attrs["eps"])
    y *= t["weight"]
    y += t["bias"]
    return y


KINDS = {"BatchNorm1d": Kind(batchnorm, {**NORM_TENSORS, "running_mean": 1, "running_var": 1}, attrs=("eps",),
                             check=norm_check)}
