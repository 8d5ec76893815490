"""torch.optim optimizers built and (de)serialised without importing `torch._dynamo`.

`Optimizer.__init__` (through `add_param_group`), `state_dict` and `load_state_dict` are wrapped
by `torch._disable_dynamo`, which imports `torch._dynamo` on the first call: ~1.8 s on the
development machine, more than the fast step needs for 20 000 steps. The wrapper only matters
under `torch.compile`, which charmlp never applies to an optimizer, so these helpers call the
undecorated methods (`functools.wraps` keeps them as `__wrapped__`). The objects are ordinary
`torch.optim.SGD` / `AdamW` instances with exactly the state torch would give them; their
`step()` (the eager engines) still imports `torch._dynamo` on first use, as torch does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from .config import TrainConfig

Opt = TypeVar("Opt", bound=torch.optim.Optimizer)


def _raw(fn: Callable) -> Callable:
    """The function under torch's lazy `_disable_dynamo` wrapper (itself if not wrapped)."""
    return getattr(fn, "__wrapped__", fn)


def build_optimizer(cls: type[Opt], params: Iterable[torch.Tensor], **kwargs: Any) -> Opt:
    """`cls(params, **kwargs)`, with `add_param_group` called undecorated during `__init__`."""
    opt = cls.__new__(cls)
    opt.add_param_group = _raw(torch.optim.Optimizer.add_param_group).__get__(opt)  # shadows the class's
    try:
        cls.__init__(opt, params, **kwargs)
    finally:
        del opt.add_param_group
    return opt


def optimizer_state_dict(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """`opt.state_dict()` without the dynamo import."""
    return _raw(type(opt).state_dict)(opt)


def load_optimizer_state_dict(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`opt.load_state_dict(state)` without the dynamo import."""
    _raw(type(opt).load_state_dict)(opt, state)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Plain SGD (p ← p − lr·g, as the lectures) or AdamW."""
    params = list(model.parameters())
    # build_optimizer: the same torch.optim object, built without importing torch._dynamo (~1.8 s)
    if cfg.optimizer == "sgd":
        return build_optimizer(torch.optim.SGD, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return build_optimizer(torch.optim.AdamW, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
