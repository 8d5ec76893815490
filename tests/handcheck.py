"""Checking a layer's hand-written backward: against float64 finite differences
(`torch.autograd.gradcheck` on a Function whose backward *is* the layer's backward) and against
autograd differentiating the same forward. Shared by the layer and model tests."""

from __future__ import annotations

import copy

import torch

from charmlp.nn import Layer


class HandWritten(torch.autograd.Function):
    """y = layer(*inputs; params) with the gradient given by `layer.backward` (dx, or a tuple of
    one gradient per input, e.g. a recurrent cell's (dx, dh))."""

    @staticmethod
    def forward(ctx, layer: Layer, n_inputs: int, *tensors: torch.Tensor) -> torch.Tensor:
        inputs, params = tensors[:n_inputs], tensors[n_inputs:]
        with torch.no_grad():
            for p, v in zip(layer.parameters(), params, strict=True):
                p.copy_(v)
            out = layer(*inputs)
        ctx.layer = copy.deepcopy(layer)  # what this call's forward kept (gradcheck calls forward many times)
        return out.clone()

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        layer = ctx.layer
        for p in layer.parameters():
            p.grad = None
        with torch.no_grad():
            d = layer.backward(dout)
        return (None, None, *(d if isinstance(d, tuple) else (d,)), *(p.grad for p in layer.parameters()))


def randomise(layer: Layer, generator: torch.Generator, scale: float = 0.5) -> Layer:
    """float64 copy with every parameter random (no 0 bias or 1 gain to hide a missing term)."""
    layer = copy.deepcopy(layer).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * scale + (1.0 if p.dim() == 1 else 0))
    return layer


def check_finite_differences(layer: Layer, *inputs: torch.Tensor) -> None:
    """The hand-written backward (every input and every parameter) against float64 finite differences."""
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    fn = lambda *ts: HandWritten.apply(layer, len(xs), *ts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (*xs, *params), eps=1e-6, atol=1e-7)


def check_against_autograd(layer: Layer, x: torch.Tensor, generator: torch.Generator, rel: float = 1e-10) -> None:
    """The hand-written backward against autograd of the same forward, float64, for a random dout."""
    auto, manual = copy.deepcopy(layer), copy.deepcopy(layer)
    xa = x.detach().clone().requires_grad_(x.is_floating_point())
    out = auto(xa)
    dout = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    out.backward(dout)
    with torch.no_grad():
        out_m = manual(x)
        dx = manual.backward(dout.clone())
    assert torch.equal(out_m, out.detach())
    pairs = [(dx, xa.grad)] if x.is_floating_point() else []
    pairs += [(pm.grad, pa.grad) for pm, pa in zip(manual.parameters(), auto.parameters(), strict=True)]
    for m, a in pairs:
        assert m.shape == a.shape
        assert (m - a).abs().max() <= rel * a.abs().max().clamp_min(1e-300), ((m - a).abs().max(), a.abs().max())


def check_layer(layer: Layer, x: torch.Tensor) -> None:
    """`check_finite_differences` on a float64 copy of `layer`, its parameters as they are."""
    check_finite_differences(layer.double(), x)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    """float64 N(0, 1) values from their own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def check_model_finite_differences(model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor) -> None:
    """The model's hand-written backward from the fused loss gradient (`cross_entropy_backward`,
    windows or whole items with −1 targets), every parameter at once, against float64 finite
    differences of `cross_entropy(model(X), Y)`."""
    from charmlp.nn import cross_entropy, cross_entropy_backward

    params = list(model.parameters())

    class Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *values: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                for p, v in zip(params, values, strict=True):
                    p.copy_(v)
                logits = model(X)
            ctx.model, ctx.logits = copy.deepcopy(model), logits
            return cross_entropy(logits, Y)

        @staticmethod
        def backward(ctx, dloss: torch.Tensor):
            m = ctx.model
            for p in m.parameters():
                p.grad = None
            with torch.no_grad():
                m.backward(dloss * cross_entropy_backward(ctx.logits, Y))
            return tuple(p.grad for p in m.parameters())

    values = [p.detach().clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(Loss.apply, tuple(values), eps=1e-6, atol=1e-7)


def items_batch(B: int, T: int, V: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded items in the sequence layout: X = [0, c1 … cn, 0 …], Y = [c1 … cn, 0, −1 …]."""
    g = torch.Generator().manual_seed(seed)
    X = torch.zeros(B, T, dtype=torch.long)
    Y = torch.full((B, T), -1, dtype=torch.long)
    for i in range(B):
        n = int(torch.randint(0, T, (), generator=g))  # 0 … T−1 characters: the end token fits
        c = torch.randint(1, V, (n,), generator=g)
        X[i, 1 : n + 1], Y[i, :n], Y[i, n] = c, c, 0
    return X, Y
