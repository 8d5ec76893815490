"""Training diagnostics: the lectures' health checks as numbers.

- activations: per tanh layer the mean, std, % saturated (|h| > 0.97: the flat tails where
  tanh' = 1 − h² ≈ 0 and the gradient through the unit vanishes) and dead units (saturated for
  every example of the batch: no gradient reaches its weights at all);
- gradients: per layer the mean and std of dL/d(output); per parameter grad std / data std;
- updates: log10(std(lr·grad) / std(param)) per parameter, sampled while training
  (`DiagnosticsRecorder`, a step hook for `train`); about −3 is healthy for SGD;
- the init check: the step-0 loss against ln(V), the loss of a uniform prediction.

Pictures live in `plots`, the HTML report in `report`; this module only computes.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import write_json
from .engines import reference_engine
from .models import LanguageModel
from .nn import Tanh, cross_entropy, cross_entropy_backward

SATURATED = 0.97  # |h| above this counts as saturated (tanh' = 1 − h² < 0.06)
MAP_THRESHOLD = 0.99  # the saturation map's cut, as in the lectures' imshow(|h| > 0.99)
CONFIDENTLY_WRONG = 0.5  # nats above ln(V) at step 0 that mean the init is confidently wrong
UPDATE_RATIO_GUIDE = -3.0  # log10 of the lectures' rule of thumb: updates ≈ 1e-3 of the data
DIAGNOSTICS = "diagnostics.json"


# ----------------------------------------------------------------------------- names


def layer_labels(model: LanguageModel) -> list[str]:
    """'2 Linear', '3 BatchNorm1d', '4 Tanh' …: index in `model.layers` and kind."""
    return [f"{i} {type(layer).__name__}" for i, layer in enumerate(model.layers)]


def named_params(model: LanguageModel) -> list[tuple[str, torch.Tensor]]:
    """('0 Embedding.weight', C), ('2 Linear.weight', W1) … in `model.parameters()` order."""
    return [
        (f"{i} {type(layer).__name__}.{attr}", p)
        for i, layer in enumerate(model.layers)
        for attr, p in layer.named_parameters(recurse=False)
    ]


def tanh_indices(model: LanguageModel) -> list[int]:
    return [i for i, layer in enumerate(model.layers) if isinstance(layer, Tanh)]


# ----------------------------------------------------------------------------- statistics


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: undefined statistics are stored as null."""
    return x if math.isfinite(x) else None


def _std(t: torch.Tensor) -> float:
    """Bessel-corrected std; nan for fewer than two values."""
    return float(t.detach().double().std()) if t.numel() > 1 else math.nan


@dataclass
class ActivationStats:
    """A tanh layer's output over one batch (B, units)."""

    mean: float
    std: float
    saturated_pct: float  # % of the B·units values with |h| > threshold
    dead_units: int  # units saturated for every example of the batch
    units: int


def activation_stats(h: torch.Tensor, threshold: float = SATURATED) -> ActivationStats:
    """Statistics of tanh outputs `h` of shape (batch, units) or (batch, T, units): every row
    of B·T is one example of the units."""
    h = h.detach().double().reshape(-1, h.shape[-1])
    sat = h.abs() > threshold
    return ActivationStats(
        mean=float(h.mean()),
        std=_std(h),
        saturated_pct=100.0 * float(sat.double().mean()),
        dead_units=int(sat.all(dim=0).sum()),
        units=h.shape[-1],
    )


def mean_std(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach().double()
    return float(t.mean()), _std(t)


def grad_data_ratio(param: torch.Tensor, grad: torch.Tensor) -> float:
    """std(grad) / std(param): how large the gradient is against the values it will change.
    nan when std(param) is 0 (e.g. BatchNorm's γ = 1 at init)."""
    num, den = _std(grad), _std(param)
    return num / den if den > 0 else math.nan


def update_ratio(param: torch.Tensor, grad: torch.Tensor, lr: float) -> float:
    """log10(std(lr·grad) / std(param)); SGD's step is exactly −lr·grad. nan when undefined."""
    num, den = lr * _std(grad), _std(param)
    if not (num > 0 and den > 0):  # a zero (or nan) std has no logarithm
        return math.nan
    return math.log10(num / den)


# ----------------------------------------------------------------------------- init check


@dataclass
class InitCheck:
    """The step-0 loss against ln(V): a uniform guess over V characters costs ln(V) nats."""

    loss: float
    ln_vocab: float
    margin: float = CONFIDENTLY_WRONG

    @property
    def excess(self) -> float:
        return self.loss - self.ln_vocab

    @property
    def confidently_wrong(self) -> bool:
        return not self.excess <= self.margin  # a nan loss is wrong too

    def message(self) -> str:
        head = f"step-0 loss {self.loss:.4f} vs ln V = {self.ln_vocab:.4f} ({self.excess:+.4f})"
        if self.confidently_wrong:
            return (
                f"{head}: the untrained model is confidently wrong (more than {self.margin:g} above ln V); "
                "its initial logits are too large: shrink the output layer (--init-out-scale, default 0.1)"
            )
        return f"{head}: the untrained model predicts close to uniformly, as it should"

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "ln_vocab": self.ln_vocab, "excess": self.excess,
                "confidently_wrong": self.confidently_wrong, "message": self.message()}


def init_check(loss: float, vocab_size: int, margin: float = CONFIDENTLY_WRONG) -> InitCheck:
    return InitCheck(float(loss), math.log(vocab_size), margin)


def init_warning_hook(
    write: Callable[[str], None] | None = None,
) -> Callable[[int, LanguageModel, float, torch.Tensor], None]:
    """A `train` step hook that warns (on stderr) at step 0 if the init is confidently wrong."""
    if write is None:
        from tqdm.auto import tqdm

        def write(msg: str) -> None:  # tqdm.write keeps a running progress bar intact
            tqdm.write(msg, file=sys.stderr)

    def hook(step: int, model: LanguageModel, lr: float, loss: torch.Tensor) -> None:
        if step == 0:
            check = init_check(float(loss), model.cfg.vocab_size)
            if check.confidently_wrong:
                write(f"warning: {check.message()}")

    hook.wants = lambda step: step == 0  # the steps it reads: a GPU loop need not sync on the others
    return hook


# ----------------------------------------------------------------------------- during training


@dataclass
class DiagnosticsRecorder:
    """Step hook for `train`: every `every` steps, record per parameter the update ratio and the
    grad:data ratio, and per tanh layer the statistics of its output on that step's batch.

    Called after the optimizer step: `.grad` still holds this step's gradient and each Tanh's
    `.out` this step's activations (at step 0: those of the initial weights).
    """

    every: int = 10
    steps: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    update_ratio: dict[str, list[float | None]] = field(default_factory=dict)
    grad_data: dict[str, list[float | None]] = field(default_factory=dict)
    tanh: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("every must be ≥ 1")

    @torch.no_grad()
    def wants(self, step: int) -> bool:
        """The steps it records (the training loop calls it on those only)."""
        return step % self.every == 0

    def __call__(self, step: int, model: LanguageModel, lr: float, loss: torch.Tensor) -> None:
        if not self.wants(step):
            return
        self.steps.append(step)
        self.lr.append(lr)
        self.loss.append(float(loss))
        for name, p in named_params(model):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            self.update_ratio.setdefault(name, []).append(_finite(update_ratio(p, g, lr)))
            self.grad_data.setdefault(name, []).append(_finite(grad_data_ratio(p, g)))
        labels = layer_labels(model)
        for i in tanh_indices(model):
            out = getattr(model.layers[i], "out", None)
            if out is None:
                continue
            st = asdict(activation_stats(out))
            row = self.tanh.setdefault(labels[i], {k: [] for k in ("mean", "std", "saturated_pct", "dead_units")})
            for k in row:
                row[k].append(st[k])

    def to_dict(self) -> dict[str, Any]:
        return {
            "every": self.every, "saturation_threshold": SATURATED, "steps": self.steps, "lr": self.lr,
            "loss": self.loss, "update_ratio": self.update_ratio, "grad_data": self.grad_data, "tanh": self.tanh,
        }

    def save(self, run_dir: str | Path) -> Path:
        """Write `diagnostics.json` into the run directory (atomically)."""
        path = Path(run_dir) / DIAGNOSTICS
        write_json(path, self.to_dict())
        return path


def default_every(steps: int, samples: int = 1000) -> int:
    """Sample about `samples` times over a run."""
    return max(1, steps // samples)


# ----------------------------------------------------------------------------- one batch


@dataclass
class LayerSnapshot:
    index: int
    label: str
    out: torch.Tensor  # the layer's output on the batch (CPU)
    grad: torch.Tensor | None  # dL/d(output)


@dataclass
class ParamSnapshot:
    label: str
    data: torch.Tensor
    grad: torch.Tensor


@dataclass
class Snapshot:
    """Every layer's output and output gradient, and every parameter's gradient, on one batch."""

    loss: float
    layers: list[LayerSnapshot]
    params: list[ParamSnapshot]

    def tanh(self) -> list[LayerSnapshot]:
        return [s for s in self.layers if s.label.endswith(" Tanh")]


def take_snapshot(model: LanguageModel, xb: torch.Tensor, yb: torch.Tensor, engine: str = "autograd") -> Snapshot:
    """Forward and backward one batch in training mode (BatchNorm uses the batch's statistics,
    as it did in training) on a copy of `model`, so its running statistics stay untouched.

    autograd: `retain_grad()` on every layer's output; manual: the hand-written backward keeps
    the gradient arriving at each layer (`Sequential.keep_grads`).
    """
    m = copy.deepcopy(model).train()
    for p in m.parameters():
        p.grad = None
    outs: list[torch.Tensor] = []
    engine = reference_engine(engine)
    if engine == "manual":
        m.layers.keep_grads = True
        with torch.no_grad():
            x = xb
            for layer in m.layers:
                x = layer(x)
                outs.append(x)
            loss = cross_entropy(x, yb)
            m.backward(cross_entropy_backward(x, yb))
        grads = [getattr(layer, "grad_out", None) for layer in m.layers]
    elif engine == "autograd":
        with torch.enable_grad():
            x = xb
            for layer in m.layers:
                x = layer(x)
                if x.requires_grad:
                    x.retain_grad()
                outs.append(x)
            loss = cross_entropy(x, yb)
            loss.backward()
        grads = [o.grad for o in outs]
    else:
        raise ValueError(f"unknown engine {engine!r}")
    labels = layer_labels(m)
    layers = [
        LayerSnapshot(i, labels[i], o.detach().cpu(), None if g is None else g.detach().cpu())
        for i, (o, g) in enumerate(zip(outs, grads, strict=False))
    ]
    params = [
        ParamSnapshot(name, p.detach().cpu().clone(), (p.grad if p.grad is not None else torch.zeros_like(p)).cpu())
        for name, p in named_params(m)
    ]
    return Snapshot(float(loss.detach()), layers, params)


def snapshot_tables(snap: Snapshot, lr: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """The statistics of a snapshot as rows: tanh layers, layer output gradients, parameters."""
    tanh_rows = [{"layer": s.label, **asdict(activation_stats(s.out))} for s in snap.tanh()]
    grad_rows = []
    for s in snap.layers:
        if s.grad is not None:
            mean, std = mean_std(s.grad)
            grad_rows.append({"layer": s.label, "shape": list(s.grad.shape), "mean": mean, "std": _finite(std)})
    param_rows = []
    for p in snap.params:
        row = {
            "param": p.label, "shape": list(p.data.shape), "data_std": _finite(_std(p.data)),
            "grad_std": _finite(_std(p.grad)), "grad_data": _finite(grad_data_ratio(p.data, p.grad)),
        }
        if lr is not None:
            row["update_ratio"] = _finite(update_ratio(p.data, p.grad, lr))
        param_rows.append(row)
    return {"tanh": tanh_rows, "grads": grad_rows, "params": param_rows}


# ----------------------------------------------------------------------------- embeddings


def embedding_2d(C: torch.Tensor) -> tuple[torch.Tensor, list[float] | None]:
    """(V, n_embd) → (V, 2) coordinates to plot, and the share of variance each axis holds.

    n_embd = 2: the embedding itself. n_embd > 2: the first two principal components,
    C_centred = U·S·Vᵀ → coordinates U·S = C_centred·V[:, :2], variance share S²/ΣS².
    n_embd = 1: the single coordinate and a zero second axis.
    """
    C = C.detach().double().cpu()
    if C.shape[1] == 1:
        return torch.cat([C, torch.zeros_like(C)], dim=1), None
    if C.shape[1] == 2:
        return C.clone(), None
    Cc = C - C.mean(0)
    _, S, Vh = torch.linalg.svd(Cc, full_matrices=False)
    share = (S**2 / (S**2).sum()).tolist()
    return Cc @ Vh[:2].T, share[:2]


def smooth(values: list[float], window: int) -> tuple[list[int], list[float]]:
    """Means over consecutive chunks of `window` values (the lectures' view(-1, k).mean(1)):
    (index of each chunk's centre, chunk mean); a shorter last chunk is averaged too."""
    xs, ys = [], []
    for i in range(0, len(values), max(1, window)):
        chunk = values[i : i + window]
        xs.append(i + (len(chunk) - 1) // 2)
        ys.append(sum(chunk) / len(chunk))
    return xs, ys
