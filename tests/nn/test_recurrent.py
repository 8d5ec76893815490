"""The recurrent cells and backprop through time: each hand-written backward against float64
finite differences (`torch.autograd.gradcheck` on a Function whose backward *is* the layer's)
and against autograd of the same forward, at random batch sizes, lengths and widths."""

from __future__ import annotations

import copy

import pytest
import torch

from charmlp.nn import GRUCell, Recurrent, RNNCell
from handcheck import check_finite_differences, rand

SEEDS = [0, 1, 2]


def sizes(seed: int) -> tuple[int, int, int, int]:
    """Random (B, T, E, H) for one test case."""
    g = torch.Generator().manual_seed(1000 + seed)
    B, T, E, H = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 6), (1, 7), (1, 5), (1, 6)))
    return B, T, E, H


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """float64, every parameter (biases and h0 too) drawn at random, so no term vanishes."""
    module = module.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return module


@pytest.mark.parametrize("cell_class", [RNNCell, GRUCell])
@pytest.mark.parametrize("seed", SEEDS)
def test_cell_backward_matches_finite_differences(cell_class, seed):
    B, _, E, H = sizes(seed)
    cell = randomise(cell_class(E, H), seed)
    check_finite_differences(cell, rand(B, E, seed=seed), rand(B, H, seed=seed + 50))


@pytest.mark.parametrize("cell_class", [RNNCell, GRUCell])
@pytest.mark.parametrize("seed", SEEDS)
def test_unrolled_backward_matches_finite_differences(cell_class, seed):
    B, T, E, H = sizes(seed)
    layer = randomise(Recurrent(cell_class(E, H)), seed)
    check_finite_differences(layer, rand(B, T, E, seed=seed))


@pytest.mark.parametrize("cell_class", [RNNCell, GRUCell])
@pytest.mark.parametrize("seed", SEEDS + [3, 4])
def test_unrolled_backward_matches_autograd(cell_class, seed):
    """BPTT by hand vs autograd through the same forward, every parameter and the input."""
    B, T, E, H = sizes(seed)
    B, T = B + 4, T + 8  # longer sequences: the gradient crosses many steps
    auto = randomise(Recurrent(cell_class(E, H)), seed)
    manual = copy.deepcopy(auto)
    x = rand(B, T, E, seed=seed)
    dout = rand(B, T, H, seed=seed + 1)
    xa = x.clone().requires_grad_(True)
    auto(xa).backward(dout)
    with torch.no_grad():
        manual(x)
        dx = manual.backward(dout)
    assert torch.allclose(dx, xa.grad, rtol=0, atol=1e-12)
    for (name, pa), pm in zip(auto.named_parameters(), manual.parameters(), strict=True):
        assert torch.allclose(pm.grad, pa.grad, rtol=0, atol=1e-12), name


@pytest.mark.parametrize("cell_class", [RNNCell, GRUCell])
def test_unrolled_forward_is_the_cell_applied_step_by_step(cell_class):
    layer = randomise(Recurrent(cell_class(3, 4)), 7)
    x = rand(2, 5, 3)
    with torch.no_grad():
        out = layer(x)
        h = layer.h0.expand(2, -1)
        for t in range(5):
            h = layer.cell(x[:, t], h)
            assert torch.allclose(out[:, t], h, rtol=0, atol=1e-14)


def test_outputs_are_causal():
    """Changing x_t leaves the hidden states before t unchanged."""
    layer = randomise(Recurrent(GRUCell(3, 4)), 1)
    x = rand(2, 6, 3)
    y = x.clone()
    y[:, 4] += 1.0
    with torch.no_grad():
        a, b = layer(x), layer(y)
    assert torch.equal(a[:, :4], b[:, :4]) and not torch.allclose(a[:, 4:], b[:, 4:])


def test_gru_gates_follow_their_equations():
    """z = 1 copies h (h' = h + z⊙(c − h)); the first state is h0 everywhere."""
    cell = randomise(GRUCell(2, 3), 3)
    with torch.no_grad():
        cell.b[:3] = 100.0  # z ≈ 1: h' = c
        x, h = rand(4, 2), rand(4, 3, seed=1)
        out = cell(x, h)
        r = torch.sigmoid(x @ cell.Wx[:, 3:6] + cell.b[3:6] + h @ cell.Wh[:, 3:])
        c = torch.tanh(x @ cell.Wx[:, 6:] + cell.b[6:] + (r * h) @ cell.Wc)
        assert torch.allclose(out, c, atol=1e-12)
        cell.b[:3] = -100.0  # z ≈ 0: h' = h
        assert torch.allclose(cell(x, h), h, atol=1e-12)


def test_backward_accumulates_into_existing_grads():
    layer = randomise(Recurrent(RNNCell(2, 3)), 0)
    x, dout = rand(3, 4, 2), rand(3, 4, 3, seed=1)
    with torch.no_grad():
        layer(x)
        layer.backward(dout)
        once = [p.grad.clone() for p in layer.parameters()]
        layer.backward(dout)
    assert all(torch.allclose(p.grad, 2 * g) for p, g in zip(layer.parameters(), once))


@pytest.mark.parametrize("cell_class", [RNNCell, GRUCell])
@pytest.mark.parametrize("seed", SEEDS)
def test_infer_is_forward_without_the_caches(cell_class, seed):
    """Evaluation's forward (`Recurrent.infer`, `Cell.infer_step`) gives forward's hidden states
    bit for bit (the same operations, written in place), and leaves forward's caches alone."""
    B, T, E, H = sizes(seed)
    layer = randomise(Recurrent(cell_class(E, H)), seed)
    x = rand(B, T, E, seed=seed + 7)
    with torch.no_grad():
        want = layer(x)
        caches = layer.caches
        got = layer.infer(x)
    assert layer.caches is caches
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("cell_class", [RNNCell, GRUCell])
@pytest.mark.parametrize("seed", SEEDS)
def test_infer_step_hw_is_the_step_given_h_wh(cell_class, seed):
    """The prefix tree's step (`Cell.infer_step_hw`: h·Wh computed ahead, tanh as 2σ(2a) − 1 on the
    CPU) is `infer_step`'s h' to round-off."""
    B, _, E, H = sizes(seed)
    cell = randomise(cell_class(E, H), seed)
    xp, h = rand(B, cell.gates * H, seed=seed + 3), rand(B, H, seed=seed + 4)
    with torch.no_grad():
        want = cell.infer_step(xp.clone(), h, torch.empty(B, H, dtype=h.dtype))
        got = cell.infer_step_hw(xp.clone(), h @ cell.Wh, h if cell.reads_h else None, torch.empty(B, H, dtype=h.dtype))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
