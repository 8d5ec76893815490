"""GELU's one-pass CPU kernel: its exp against float64's, its gradient against the exact float64
gradient (autograd's) and against the tensor operations it stands in for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charmlp.nn import GELU
from charmlp.nn.gelu_kernel import exp_nonpositive_array

FLOAT32_ULP_AT_1 = 2.0**-23


def test_exp_is_within_two_ulp_of_float64_exp():
    rng = np.random.default_rng(0)
    t = np.concatenate([-rng.random(200_000) * 87, -rng.random(50_000) * 1e-3,
                        [0.0, -1e-30, -0.5 * np.log(2), 0.5 * np.log(2) - 1, -86.99, -87.0]]).astype(np.float32)
    out = np.empty_like(t)
    exp_nonpositive_array(t, out)
    exact = np.exp(t.astype(np.float64))
    rel = np.abs(out - exact) / exact
    assert rel.max() <= 2 * FLOAT32_ULP_AT_1, f"worst {rel.max() / FLOAT32_ULP_AT_1:.2f} ulp at t = {t[rel.argmax()]}"


def test_exp_below_the_floor_is_tiny_and_finite():
    t = np.array([-87.5, -100.0, -1e4, -np.inf], dtype=np.float32)
    out = np.empty_like(t)
    exp_nonpositive_array(t, out)
    assert np.all(np.isfinite(out)) and np.all(out > 0) and np.all(out <= np.exp(np.float32(-86.9)))


def _gelu_grad(x: torch.Tensor, dy: torch.Tensor, fused: bool) -> torch.Tensor:
    act = GELU()
    act.fused = fused
    with torch.no_grad():
        act(x)
        return act.backward(dy)


@pytest.mark.parametrize("seed", range(3))
def test_kernel_gradient_matches_the_exact_float64_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    shape = (int(torch.randint(1, 40, (1,), generator=g)), 16, 33)
    x = torch.randn(shape, generator=g) * 3
    x.view(-1)[:5] = torch.tensor([0.0, -0.0, 1e-30, -12.0, 12.0])  # Φ(0) = ½, the tails
    dy = torch.randn(shape, generator=g)
    x64 = x.double().requires_grad_(True)
    torch.nn.functional.gelu(x64).backward(dy.double())
    dx = _gelu_grad(x, dy, fused=True)
    assert dx.dtype == torch.float32
    # float32's own rounding, in units of eps·|dy|·(1 + |x|): autograd's float32 gelu_backward is
    # about 2 off there, this kernel (and the tensor operations) under 1
    scale = dy.double().abs() * (1 + x.double().abs()) * FLOAT32_ULP_AT_1
    for grad in (dx, _gelu_grad(x, dy, fused=False)):
        worst = ((grad.double() - x64.grad).abs() / scale).max().item()
        assert worst <= 4, f"{worst:.2f} eps·|dy|·(1 + |x|) from the exact gradient"


def test_a_non_contiguous_gradient_takes_the_tensor_operations():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 7, generator=g)
    dy = torch.randn(7, 5, generator=g).T  # not contiguous
    act = GELU()
    with torch.no_grad():
        act(x)
        dx = act.backward_(dy.clone().T.contiguous().T)  # the same values, still not contiguous
    assert not dy.is_contiguous()
    torch.testing.assert_close(dx, _gelu_grad(x, dy.contiguous(), fused=True), rtol=1e-5, atol=1e-6)


def test_forward_inplace_in_a_manual_step_keeps_the_derivative_and_the_same_gradient():
    """`forward_` in training mode without a graph writes gelu'(x) over x; its backward is then
    one multiplication, and the gradient is the kernel's and the tensor operations' own."""
    g = torch.Generator().manual_seed(7)
    x, dy = torch.randn(6, 5, 40, generator=g) * 3, torch.randn(6, 5, 40, generator=g)
    x.view(-1)[0] = 0.0
    expected = _gelu_grad(x, dy, fused=True)
    act = GELU().train()
    mine = x.clone()
    with torch.no_grad():
        y = act.forward_(mine)
        assert torch.equal(y, torch.nn.functional.gelu(x))
        assert act.x is None and act.dydx is mine and not torch.equal(mine, x)  # x's memory now holds gelu'(x)
        dx = act.backward(dy)
    torch.testing.assert_close(dx, expected, rtol=0, atol=0)
    torch.testing.assert_close(dx, _gelu_grad(x, dy, fused=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["eval", "graph", "float64"])
def test_forward_inplace_leaves_x_alone_where_no_manual_backward_follows(case):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64 if case == "float64" else torch.float32)
    act = GELU().train(case != "eval")
    mine = x.clone()
    with torch.set_grad_enabled(case == "graph"):
        act.forward_(mine)
    assert torch.equal(mine, x) and act.dydx is None and act.x is mine
