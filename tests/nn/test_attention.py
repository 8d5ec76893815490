"""Causal self-attention, the residual Block, its MLP and the position embedding: hand-written
backward vs float64 finite differences and autograd at random shapes; causality."""

from __future__ import annotations

import pytest
import torch

from charmlp.nn import MLP, Block, CausalSelfAttention, PositionEmbedding
from handcheck import check_against_autograd, check_finite_differences, randomise


def random_shape(seed: int) -> tuple[torch.Generator, int, int, int, int]:
    """A generator and (B, T, n_head, C) drawn from it: batch and context of any size."""
    g = torch.Generator().manual_seed(seed)
    B, T, H = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(3))
    D = int(torch.randint(1, 4, (1,), generator=g))
    return g, B, T, H, H * D


@pytest.mark.parametrize("seed", range(4))
def test_attention_backward_at_random_shapes(seed):
    g, B, T, H, C = random_shape(seed)
    attn = randomise(CausalSelfAttention(C, H), g)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    check_finite_differences(attn, x)
    check_against_autograd(attn, x, g)


@pytest.mark.parametrize("seed", range(3))
def test_block_backward_at_random_shapes(seed):
    g, B, T, H, C = random_shape(10 + seed)
    block = randomise(Block(C, H), g)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    check_against_autograd(block, x, g)
    if seed == 0:  # finite differences over every parameter of a whole block: once is enough
        check_finite_differences(block, x)


def test_mlp_and_position_embedding_backward():
    g = torch.Generator().manual_seed(20)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    for layer in (randomise(MLP(4), g), randomise(PositionEmbedding(5, 4), g)):
        check_finite_differences(layer, x)
        check_against_autograd(layer, x, g)


def test_position_embedding_gradient_only_reaches_the_positions_used():
    pe = PositionEmbedding(6, 3)
    torch.nn.init.normal_(pe.weight)
    with torch.no_grad():
        pe(torch.zeros(2, 4, 3))
        pe.backward(torch.ones(2, 4, 3))
    assert torch.equal(pe.weight.grad[:4], torch.full((4, 3), 2.0))
    assert torch.equal(pe.weight.grad[4:], torch.zeros(2, 3))


@pytest.mark.parametrize("layer_kind", ["attention", "block"])
def test_output_at_t_does_not_depend_on_later_inputs(layer_kind):
    """Causality: change the inputs after position t; outputs up to t stay bit for bit, and the
    hand-written input gradient of output t is exactly 0 at every later position."""
    g = torch.Generator().manual_seed(30)
    C, H, B, T = 8, 2, 3, 7
    layer = randomise(CausalSelfAttention(C, H) if layer_kind == "attention" else Block(C, H), g)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        for t in range(T - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn(B, T - t - 1, C, generator=g, dtype=torch.float64) * 5
            assert torch.equal(layer(x2)[:, : t + 1], y[:, : t + 1])
        t = 2
        layer(x)
        dout = torch.zeros(B, T, C, dtype=torch.float64)
        dout[:, t] = 1.0
        dx = layer.backward(dout)
    assert torch.equal(dx[:, t + 1:], torch.zeros_like(dx[:, t + 1:]))
    assert dx[:, : t + 1].abs().sum() > 0


def test_attention_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError):
        CausalSelfAttention(10, 3)


def test_attention_runs_in_float32_and_shorter_sequences():
    g = torch.Generator().manual_seed(40)
    attn = randomise(CausalSelfAttention(8, 4), g).float()
    with torch.no_grad():
        for T in (5, 2, 5, 1):  # the causal mask is cut to each length
            x = torch.randn(2, T, 8, generator=g)
            assert attn(x).shape == (2, T, 8)
            assert attn.backward(torch.ones(2, T, 8)).shape == (2, T, 8)
