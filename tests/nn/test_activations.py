"""GELU: hand-written backward vs finite differences and autograd (PyTorch's exact `gelu`)."""

from __future__ import annotations

import pytest
import torch

from charmlp.nn import GELU, Tanh
from handcheck import check_against_autograd, check_finite_differences


@pytest.mark.parametrize("seed", range(3))
def test_gelu_backward_at_random_shapes(seed):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(torch.randint(1, 7, (1,), generator=g)) for _ in range(1 + seed))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3  # tails and the bend around 0
    check_finite_differences(GELU(), x)
    check_against_autograd(GELU(), x, g)


def test_gelu_is_the_exact_erf_form():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    phi = 0.5 * (1 + torch.erf(x / 2**0.5))
    assert torch.allclose(GELU()(x), x * phi, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # the tensor operations; the CPU kernel
def test_gelu_backward_leaves_dout_alone_and_backward_inplace_reuses_it(dtype):
    g = torch.Generator().manual_seed(3)
    x, d = torch.randn(4, 6, generator=g, dtype=dtype), torch.randn(4, 6, generator=g, dtype=dtype)
    act = GELU()
    act(x)
    d0 = d.clone()
    dx = act.backward(d)
    assert torch.equal(d, d0)
    d2 = d.clone()
    assert act.backward_(d2) is d2 and torch.equal(d2, dx)


def test_tanh_backward_still_matches():
    g = torch.Generator().manual_seed(4)
    check_against_autograd(Tanh(), torch.randn(3, 5, generator=g, dtype=torch.float64), g)
