"""The layers on sequences (B, T, C) — Embedding on (B, T) ids, Linear over the last dimension,
FlattenConsecutive, BatchNorm1d over (0, 1) — each hand-written backward against float64 finite
differences, in training and eval mode, and BatchNorm1d's 3-D statistics against PyTorch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from charmlp.nn import BatchNorm1d, Embedding, FlattenConsecutive, Linear
from handcheck import check_layer, rand


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_on_2d_and_3d_input(shape, bias):
    layer = Linear(5, 4, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(rand(5, 4, seed=1))
        if bias:
            layer.bias.copy_(rand(4, seed=2))
    check_layer(layer, rand(*shape).requires_grad_(True))


def _bn(C: int = 5) -> BatchNorm1d:
    bn = BatchNorm1d(C)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.3 * rand(C, seed=3))
        bn.bias.copy_(0.3 * rand(C, seed=4))
        bn.running_mean.copy_(0.5 * rand(C, seed=5).float())
        bn.running_var.copy_(1 + 0.5 * rand(C, seed=6).abs().float())
    return bn


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 5), (2, 1, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward_on_2d_and_3d_input(shape, training):
    bn = _bn()
    bn.train(training)
    check_layer(bn, rand(*shape, seed=7).requires_grad_(True))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_3d_equals_torch_batch_norm_on_the_flattened_rows(training):
    """Statistics over (0, 1): the same as F.batch_norm on the (B·T, C) rows, fed the same statistics
    (training: F.batch_norm's running variance uses n − 1 too, as does ours)."""
    x = rand(3, 4, 5, seed=8).float()
    ours = _bn()
    ours.train(training)
    rm, rv = ours.running_mean.clone(), ours.running_var.clone()
    y = ours(x)
    y_ref = F.batch_norm(x.reshape(-1, 5), rm, rv, ours.weight.detach(), ours.bias.detach(), training=training,
                         momentum=0.1, eps=1e-5)
    if training:  # the output uses the (n − 1) variance as the lectures do; F.batch_norm's the biased one
        xr = x.reshape(-1, 5)
        var = xr.var(0, unbiased=True)
        y_ref = (xr - xr.mean(0)) / torch.sqrt(var + 1e-5) * ours.weight.detach() + ours.bias.detach()
    torch.testing.assert_close(y.reshape(-1, 5), y_ref, rtol=1e-5, atol=1e-5)
    assert ours.running_mean.shape == (5,)
    torch.testing.assert_close(ours.running_mean, rm)  # F.batch_norm updated rm, rv in place the same way
    torch.testing.assert_close(ours.running_var, rv)


@pytest.mark.parametrize("n,shape,out", [(2, (3, 8, 4), (3, 4, 8)), (4, (3, 8, 4), (3, 2, 16)),
                                         (8, (3, 8, 4), (3, 32)), (2, (5, 2, 3), (5, 6))])
def test_flatten_consecutive_shapes_and_backward(n, shape, out):
    layer = FlattenConsecutive(n)
    x = rand(*shape)
    y = layer(x)
    assert y.shape == out  # a length-1 time dimension is dropped
    # (B, T, C) → (B, T/n, n·C): row t holds positions n·t … n·t + n − 1, side by side
    torch.testing.assert_close(y.reshape(shape[0], -1, n, shape[2]), x.reshape(shape[0], -1, n, shape[2]))
    check_layer(layer, x.clone().requires_grad_(True))


def test_flatten_consecutive_refuses_a_time_dimension_it_does_not_divide():
    with pytest.raises(ValueError, match="divisible by 3"):
        FlattenConsecutive(3)(torch.zeros(2, 8, 4))


def test_embedding_on_2d_ids_accumulates_repeats():
    emb = Embedding(6, 3)
    with torch.no_grad():
        emb.weight.copy_(rand(6, 3).float())
    ids = torch.tensor([[1, 2, 1], [5, 1, 0]])
    out = emb(ids)
    assert out.shape == (2, 3, 3)
    dout = rand(2, 3, 3, seed=9).float()
    emb.backward(dout)
    expected = torch.zeros(6, 3)
    for b in range(2):
        for t in range(3):
            expected[ids[b, t]] += dout[b, t]
    torch.testing.assert_close(emb.weight.grad, expected)
