"""LayerNorm: closed-form backward vs finite differences and autograd; its forward is the textbook one."""

from __future__ import annotations

import pytest
import torch

from charmlp.nn import LayerNorm
from handcheck import check_against_autograd, check_finite_differences, randomise


@pytest.mark.parametrize("seed", range(4))
def test_layernorm_backward_at_random_shapes(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, C = (int(torch.randint(1, 6, (1,), generator=g)) for _ in range(3))
    C += 1  # a single feature normalises to 0: its gradient is 0 everywhere, not worth a check
    ln = randomise(LayerNorm(C), g)
    shape = (B, C) if seed % 2 else (B, T, C)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    check_finite_differences(ln, x)
    check_against_autograd(ln, x, g)


def test_layernorm_forward_normalises_each_row():
    g = torch.Generator().manual_seed(0)
    ln = LayerNorm(8).double()
    x = torch.randn(3, 4, 8, generator=g, dtype=torch.float64) * 3 + 1
    y = ln(x)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    assert torch.allclose(y, (x - mu) / torch.sqrt(var + ln.eps))
    assert torch.allclose(y.mean(-1), torch.zeros(3, 4, dtype=torch.float64), atol=1e-12)


def test_layernorm_backward_accumulates():
    g = torch.Generator().manual_seed(1)
    ln = randomise(LayerNorm(5), g)
    x, d = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ln(x)
        ln.backward(d)
        first = ln.weight.grad.clone()
        ln(x)
        ln.backward(d)
    assert torch.allclose(ln.weight.grad, 2 * first)
