"""Each layer's hand-written backward against float64 finite differences
(`torch.autograd.gradcheck` on a Function whose backward *is* the layer's backward),
and the bookkeeping rules of `backward` (accumulation, the mode forward ran in)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from charmlp.models import MLPConfig, build_model
from charmlp.nn import BatchNorm1d, Embedding, Flatten, Linear, Sequential, Tanh, cross_entropy, cross_entropy_backward
from handcheck import check_layer, check_model_finite_differences, rand, randomise


@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_matches_finite_differences(bias):
    layer = Linear(5, 4, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(rand(5, 4, seed=1))
        if bias:
            layer.bias.copy_(rand(4, seed=2))
    check_layer(layer, rand(6, 5).requires_grad_(True))


def test_tanh_and_flatten_backward_match_finite_differences():
    check_layer(Tanh(), rand(6, 5).requires_grad_(True))
    check_layer(Flatten(), rand(4, 3, 2).requires_grad_(True))


@pytest.mark.parametrize("n", [2, 3, 8])
def test_batchnorm_training_backward_matches_finite_differences(n):
    bn = BatchNorm1d(5)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.3 * rand(5, seed=3))
        bn.bias.copy_(0.3 * rand(5, seed=4))
    bn.train()
    check_layer(bn, rand(n, 5).requires_grad_(True))


def test_batchnorm_eval_backward_matches_finite_differences():
    bn = BatchNorm1d(5)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.3 * rand(5, seed=3))
        bn.bias.copy_(0.3 * rand(5, seed=4))
        bn.set_statistics(rand(5, seed=5), rand(5, seed=6).abs() + 0.5)
    bn.eval()
    check_layer(bn, rand(4, 5).requires_grad_(True))


def test_embedding_backward_matches_finite_differences_with_repeated_ids():
    emb = Embedding(7, 3)
    with torch.no_grad():
        emb.weight.copy_(rand(7, 3))
    idx = torch.tensor([[1, 1, 4], [4, 0, 1], [6, 1, 1]])  # repeats must accumulate; 2, 3, 5 get 0
    check_layer(emb, idx)


def test_embedding_backward_scatters_into_a_zero_table():
    emb = Embedding(5, 2).double()
    emb(torch.tensor([[0, 3], [3, 3]], dtype=torch.uint8))
    emb.backward(torch.ones(2, 2, 2, dtype=torch.float64))
    assert torch.equal(emb.weight.grad, torch.tensor([[1.0, 1], [0, 0], [0, 0], [3, 3], [0, 0]], dtype=torch.float64))


def test_fused_cross_entropy_backward_matches_finite_differences():
    y = torch.tensor([0, 3, 3, 1, 4])

    class CE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits):
            ctx.save_for_backward(logits)
            return cross_entropy(logits.detach(), y)

        @staticmethod
        def backward(ctx, dloss):
            (logits,) = ctx.saved_tensors
            return dloss * cross_entropy_backward(logits, y)

    assert torch.autograd.gradcheck(CE.apply, (rand(5, 6).requires_grad_(True),), eps=1e-6, atol=1e-7)


def test_fused_cross_entropy_backward_is_softmax_minus_onehot_over_n():
    logits, y = rand(4, 5), torch.tensor([1, 0, 4, 4])
    expected = (torch.softmax(logits, 1) - F.one_hot(y, 5).double()) / 4
    assert torch.allclose(cross_entropy_backward(logits, y), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_whole_model_backward_matches_finite_differences(batchnorm):
    """Sequential.backward from the fused loss gradient, every parameter at once."""
    model = build_model(MLPConfig(vocab_size=6, block_size=2, n_embd=3, n_hidden=5, n_layer=2, batchnorm=batchnorm), seed=3)
    model = model.double().train()
    with torch.no_grad():  # γ, β, biases off their 0s and 1s
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    X = torch.tensor([[0, 1], [2, 5], [5, 5], [3, 0], [1, 1]])
    Y = torch.tensor([1, 5, 0, 2, 1])
    check_model_finite_differences(model, X, Y)


def test_backward_accumulates_like_autograd():
    layer = Linear(3, 2)
    x = rand(4, 3).float()
    dout = rand(4, 2, seed=1).float()
    layer(x)
    layer.backward(dout)
    once = layer.weight.grad.clone()
    layer.backward(dout)
    assert torch.allclose(layer.weight.grad, 2 * once)


def test_batchnorm_backward_follows_the_mode_forward_ran_in():
    """model.eval() between forward and backward must not switch the formula."""
    bn = BatchNorm1d(4).double().train()
    x, dout = rand(6, 4), rand(6, 4, seed=1)
    x_ref = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(copy.deepcopy(bn)(x_ref), x_ref, dout)  # training-mode forward
    with torch.no_grad():
        bn(x)
    bn.eval()
    dx = bn.backward(dout)
    assert torch.allclose(dx, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(dx, dout * bn.rstd, rtol=0, atol=1e-3)  # not the eval formula


def test_sequential_backward_walks_layers_in_reverse():
    # seeded weights: Linear's are torch.empty until a model initialises them, and freed memory may hold NaN
    seq = randomise(Sequential(Linear(3, 4), Tanh(), Linear(4, 2)), torch.Generator().manual_seed(0))
    x = rand(5, 3).requires_grad_(True)
    dout = rand(5, 2, seed=1)
    out = seq(x)
    (gx,) = torch.autograd.grad(out, x, dout, retain_graph=True)
    with torch.no_grad():
        seq(x)
        dx = seq.backward(dout)
    assert torch.allclose(dx, gx, rtol=0, atol=1e-14)
