"""LayerNorm: closed-form backward vs finite differences and autograd — both forms of it, the CPU's
one-pass kernel and the tensor operations (a GPU's) —; its forward is the textbook one."""

from __future__ import annotations

import pytest
import torch

from charmlp.nn import LayerNorm
from handcheck import check_against_autograd, check_finite_differences, randomise


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_layernorm_backward_at_random_shapes(seed, fused):
    g = torch.Generator().manual_seed(seed)
    B, T, C = (int(torch.randint(1, 6, (1,), generator=g)) for _ in range(3))
    C += 1  # a single feature normalises to 0: its gradient is 0 everywhere, not worth a check
    ln = randomise(LayerNorm(C), g)
    ln.fused = fused
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


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_the_kernel_and_the_tensor_operations_agree_with_a_residual(dtype, tol):
    """The one-pass kernel and the tensor operations: the same dx (+ residual), dγ, dβ, on a
    non-contiguous gradient too."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 9, 16, generator=g) * 2 + 0.3).to(dtype)
    dout = torch.randn(6, 16, 9, generator=g).to(dtype).transpose(1, 2)  # not contiguous
    res = torch.randn(6, 9, 16, generator=g).to(dtype)
    grads = {}
    for fused in (True, False):
        ln = randomise(LayerNorm(16), torch.Generator().manual_seed(3)).to(dtype)
        ln.fused = fused
        with torch.no_grad():
            ln(x)
            dx = ln.backward(dout, residual=res)
        grads[fused] = (dx, ln.weight.grad, ln.bias.grad)
    for a, b in zip(grads[True], grads[False], strict=True):
        assert a.shape == b.shape and a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_residual", [False, True])
def test_backward_inplace_writes_over_dout_and_equals_backward(with_residual, dtype):
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(5, 7, 12, generator=g) * 2 + 0.3).to(dtype)
    dout = torch.randn(5, 7, 12, generator=g).to(dtype)
    res = torch.randn(5, 7, 12, generator=g).to(dtype) if with_residual else None
    ln = randomise(LayerNorm(12), torch.Generator().manual_seed(5)).to(dtype)
    with torch.no_grad():
        ln(x)
        d0 = dout.clone()
        dx = ln.backward(dout, residual=res)
        assert torch.equal(dout, d0)  # backward leaves its argument alone
        grads = ln.weight.grad.clone(), ln.bias.grad.clone()
        ln.weight.grad = ln.bias.grad = None
        d2 = dout.clone()
        assert ln.backward_(d2, residual=res) is d2
    torch.testing.assert_close(d2, dx, rtol=0, atol=0)
    torch.testing.assert_close((ln.weight.grad, ln.bias.grad), grads, rtol=0, atol=0)
