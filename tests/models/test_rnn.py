"""The recurrent models (rnn, gru): shape, causality, initialisation, and the whole model's
hand-written backward against float64 finite differences and autograd on padded items."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from charmlp.errors import CharmlpError
from charmlp.models import GRUConfig, RNNConfig, build_model, num_params
from charmlp.nn import GRUCell, Recurrent, RNNCell, cross_entropy, cross_entropy_backward
from handcheck import check_model_finite_differences, items_batch

CONFIGS = {"rnn": RNNConfig, "gru": GRUConfig}


def model_for(kind: str, V: int, T: int, E: int, H: int, seed: int) -> torch.nn.Module:
    model = build_model(CONFIGS[kind](vocab_size=V, block_size=T, n_embd=E, n_hidden=H), seed=seed).double()
    with torch.no_grad():  # biases and h0 off their initial 0s
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_layers_shape_and_parameter_count(kind):
    model = build_model(CONFIGS[kind](vocab_size=27, block_size=16), seed=0)
    assert [type(m).__name__ for m in model.layers] == ["Embedding", "Recurrent", "Linear"]
    assert isinstance(model.layers[1].cell, RNNCell if kind == "rnn" else GRUCell)
    assert model.cfg.sequence
    E, H, V, G = 64, 128, 27, 1 if kind == "rnn" else 3
    cell = E * G * H + G * H + H * H * (1 if kind == "rnn" else 3)
    assert num_params(model) == V * E + cell + H + H * V + V  # C, cell, h0, head
    X, _ = items_batch(5, 16, 27, 0)
    with torch.no_grad():
        assert model(X).shape == (5, 16, 27)


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_untrained_loss_is_near_ln_vocab_and_outputs_are_causal(kind):
    model = build_model(CONFIGS[kind](vocab_size=27, block_size=12), seed=1)
    X, Y = items_batch(64, 12, 27, 1)
    with torch.no_grad():
        assert abs(cross_entropy(model(X), Y).item() - math.log(27)) < 0.05
        X2 = X.clone()
        X2[:, 7] = (X2[:, 7] + 1) % 27
        a, b = model(X), model(X2)
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("kind", ["rnn", "gru"])
@pytest.mark.parametrize("seed", [0, 1])
def test_whole_model_backward_matches_finite_differences(kind, seed):
    """Model.backward from the masked loss's gradient, every parameter at once, random sizes."""
    g = torch.Generator().manual_seed(seed)
    B, T, E, H, V = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((2, 5), (2, 6), (1, 4), (1, 5), (3, 7)))
    model = model_for(kind, V, T, E, H, seed)
    X, Y = items_batch(B, T, V, seed)
    check_model_finite_differences(model, X, Y)


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_whole_model_backward_matches_autograd(kind):
    model = model_for(kind, 11, 14, 8, 16, 3)
    manual = copy.deepcopy(model)
    X, Y = items_batch(20, 14, 11, 3)
    cross_entropy(model(X), Y).backward()
    with torch.no_grad():
        logits = manual(X)
        manual.backward(cross_entropy_backward(logits, Y))
    for (name, pa), pm in zip(model.named_parameters(), manual.parameters(), strict=True):
        assert torch.allclose(pm.grad, pa.grad, rtol=0, atol=1e-13), name
    assert isinstance(manual.layers[1], Recurrent) and manual.layers[1].h0.grad.abs().sum() > 0


def test_init_scales():
    model = build_model(GRUConfig(vocab_size=27, block_size=8, n_embd=200, n_hidden=300), seed=0)
    cell = model.layers[1].cell
    assert abs(cell.Wx.std().item() - 1 / math.sqrt(500)) < 2e-3 and abs(cell.Wh.std().item() - 1 / math.sqrt(500)) < 2e-3
    assert not cell.b.any() and not model.layers[1].h0.any() and not model.layers[2].bias.any()


def test_bad_sizes_are_user_errors():
    with pytest.raises(CharmlpError, match="--n-hidden"):
        build_model(RNNConfig(block_size=8, n_hidden=0))
    with pytest.raises(CharmlpError, match="--n-embd"):
        build_model(GRUConfig(block_size=8, n_embd=-3))


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_dropout_model_backward_matches_finite_differences(kind):
    """With dropout on the embeddings and the hidden states: every forward of the check draws the
    same masks (the count reset), and the backward passes the gradient through them."""
    from charmlp.nn import Dropout

    cfg = (GRUConfig if kind == "gru" else RNNConfig)(vocab_size=5, block_size=4, n_embd=3, n_hidden=4, dropout=0.3)
    model = build_model(cfg, seed=2).double()
    drops = [m for m in model.modules() if isinstance(m, Dropout)]
    assert len(drops) == 2 and len({d.seed for d in drops}) == 2
    model.register_forward_pre_hook(lambda m, i: [setattr(d, "calls", 0) for d in drops] and None)
    X, Y = items_batch(3, 4, 5, 1)
    check_model_finite_differences(model, X, Y)
    assert any((d.mask == 0).any() for d in drops)  # some units were dropped
