"""Dropout: its mask statistics, its backward against float64 finite differences and autograd
(alone and inside a transformer block), and masks that a checkpoint resumes."""

from __future__ import annotations

import pytest
import torch

from charmlp.nn import Block, Dropout
from handcheck import check_against_autograd, check_finite_differences, rand, randomise


def frozen(layer: torch.nn.Module) -> torch.nn.Module:
    """Every forward of `layer` draws the same dropout masks (the finite differences need a fixed function)."""
    drops = [m for m in layer.modules() if isinstance(m, Dropout)]
    for i, d in enumerate(drops):
        d.seed = 1000 + i
    layer.register_forward_pre_hook(lambda m, inputs: [setattr(d, "calls", 0) for d in drops] and None)
    return layer


def test_mask_keeps_about_one_minus_p_scaled_and_eval_is_identity():
    d = Dropout(0.3)
    x = torch.ones(200, 500)
    y = d(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.02  # inverted dropout: E[y] = x
    assert not torch.equal(d(x), y)  # each training forward draws a new mask
    d.eval()
    assert d(x) is x and torch.equal(d.backward(x), x)


def test_masks_follow_seed_and_call_count_and_survive_a_state_dict():
    a, b = Dropout(0.5), Dropout(0.5)
    a.seed = b.seed = 7
    x = torch.randn(8, 16)
    first = [a(x) for _ in range(3)]
    state = a.state_dict()
    nxt = a(x)
    b.load_state_dict(state)  # seed and count come back: the very next mask
    assert torch.equal(b(x), nxt)
    b.calls = 0
    assert all(torch.equal(b(x), f) for f in first)
    c = Dropout(0.5)
    c.seed = 8
    assert not torch.equal(c(x), first[0])


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 6)])
def test_dropout_backward_against_finite_differences_and_autograd(shape):
    d = frozen(Dropout(0.4).double())
    check_finite_differences(d, rand(*shape))
    check_against_autograd(d, rand(*shape, seed=1), torch.Generator().manual_seed(0))


def test_block_with_dropout_backward_against_finite_differences_and_autograd():
    g = torch.Generator().manual_seed(0)
    block = frozen(randomise(Block(8, 2, dropout=0.25), g))
    assert sum(isinstance(m, Dropout) for m in block.modules()) == 2
    check_finite_differences(block, rand(2, 5, 8))
    check_against_autograd(block, rand(3, 4, 8, seed=2), g)


def test_no_dropout_layers_at_p_zero():
    assert not any(isinstance(m, Dropout) for m in Block(8, 2).modules())
    assert "drop1" not in "".join(Block(8, 2).state_dict())
