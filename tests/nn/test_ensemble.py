"""Ensemble: training splits the batch among independent members; eval predicts the mean of their
probabilities. Both backwards against float64 finite differences and autograd; the NumPy forward
and the sampler see the same mixture."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from charmlp.errors import CharmlpError
from charmlp.models import GRUConfig, TransformerConfig, build_model
from charmlp.nn import Ensemble, cross_entropy, cross_entropy_backward
from charmlp.numpy_model import Net
from handcheck import check_model_finite_differences, items_batch

V, T = 7, 6
CONFIGS = {
    "gru": GRUConfig(vocab_size=V, block_size=T, n_embd=3, n_hidden=4, members=3),
    "transformer": TransformerConfig(vocab_size=V, block_size=T, n_embd=4, n_head=2, n_layer=1, members=2),
}


def ensemble(name: str, seed: int = 0) -> torch.nn.Module:
    model = build_model(CONFIGS[name], seed=seed).double()
    with torch.no_grad():  # biases, h0, β off their initial 0s
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def test_members_are_whole_models_initialised_apart():
    model = build_model(CONFIGS["gru"], seed=0)
    (ens,) = model.layers
    assert isinstance(ens, Ensemble) and len(ens.members) == 3
    assert all(m.cfg.members == 1 for m in ens.members)
    w = [m.layers[0].weight for m in ens.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    one = build_model(GRUConfig(vocab_size=V, block_size=T, n_embd=3, n_hidden=4), seed=0)
    assert sum(p.numel() for p in model.parameters()) == 3 * sum(p.numel() for p in one.parameters())


@pytest.mark.parametrize("name", CONFIGS)
def test_eval_output_is_the_log_of_the_members_mean_probability(name):
    model = ensemble(name).eval()
    X, _ = items_batch(5, T, V, 0)
    with torch.no_grad():
        out = model(X)
        mean = torch.stack([torch.softmax(m(X), -1) for m in model.layers[0].members]).mean(0)
    torch.testing.assert_close(out.exp(), mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.softmax(out, -1), mean, rtol=0, atol=1e-14)  # usable as logits


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backward_matches_finite_differences(name, mode):
    model = ensemble(name).train(mode == "train")
    X, Y = items_batch(7, T, V, 2)  # 7 rows: shares of 3, 2, 2 (gru) and 4, 3 (transformer)
    check_model_finite_differences(model, X, Y)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backward_matches_autograd(name, mode):
    auto = ensemble(name, seed=3).train(mode == "train")
    manual = copy.deepcopy(auto)
    X, Y = items_batch(9, T, V, 3)
    cross_entropy(auto(X), Y).backward()
    with torch.no_grad():
        logits = manual(X)
        manual.backward(cross_entropy_backward(logits, Y))
    for (key, pa), pm in zip(auto.named_parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(pm.grad, pa.grad, rtol=0, atol=1e-13, msg=key)


def test_training_is_each_member_alone_on_its_share():
    """The ensemble's training gradient for member k is that member's own loss gradient on its
    share of the rows, scaled by its share of the batch's targets."""
    model = ensemble("gru")
    X, Y = items_batch(8, T, V, 4)  # shares of 3, 3, 2 rows
    with torch.no_grad():
        model.backward(cross_entropy_backward(model(X), Y))
    n = int((Y != -1).sum())
    for m, xs, ys in zip(model.layers[0].members, torch.tensor_split(X, 3), torch.tensor_split(Y, 3), strict=True):
        alone = copy.deepcopy(m)
        for p in alone.parameters():
            p.grad = None
        cross_entropy(alone(xs), ys).backward()
        share = int((ys != -1).sum()) / n
        for pa, pm in zip(alone.parameters(), m.parameters(), strict=True):
            torch.testing.assert_close(pm.grad, pa.grad * share, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", CONFIGS)
def test_numpy_forward_and_incremental_decoding(name):
    model = ensemble(name).eval()
    net = Net.from_model(model)
    X, _ = items_batch(4, T, V, 5)
    with torch.no_grad():
        want = model(X).numpy()
    np.testing.assert_allclose(net(X.numpy()), want, rtol=0, atol=1e-12)
    cache: dict = {}
    steps = [net(X.numpy()[:, t : t + 1], cache)[:, 0] for t in range(T)]  # each member keeps its own state
    np.testing.assert_allclose(np.stack(steps, 1), want, rtol=0, atol=1e-12)


def test_a_batch_smaller_than_the_ensemble_is_refused():
    model = ensemble("gru").train()
    X, _ = items_batch(2, T, V, 0)
    with pytest.raises(ValueError, match="cannot feed 3 ensemble members"):
        model(X)
    with pytest.raises(CharmlpError, match="--members"):
        build_model(GRUConfig(vocab_size=V, block_size=T, members=0))
    with torch.no_grad():  # in eval every member reads every row: any batch
        assert math.isfinite(float(cross_entropy(ensemble("gru").eval()(X), items_batch(2, T, V, 0)[1])))
