"""The eager step: a window of steps without host syncs is the same steps as one at a time."""

from __future__ import annotations

import pytest
import torch

from charmlp.config import TrainConfig
from charmlp.engines.eager import EagerStep
from charmlp.models import build_model, model_config
from charmlp.nn import cross_entropy
from charmlp.optim import make_optimizer


def make(kind: str, engine: str, optimizer: str = "adamw") -> EagerStep:
    fields = {"mlp": dict(n_embd=4, n_hidden=16), "transformer": dict(n_embd=16, n_head=2, n_layer=1)}[kind]
    cfg = model_config(kind, vocab_size=7, block_size=5, **fields)
    g = torch.Generator().manual_seed(3)
    model = build_model(cfg, generator=g)
    model.train()
    opt = make_optimizer(TrainConfig(optimizer=optimizer, lr=0.01), model)
    X = torch.randint(0, 7, (200, 5), generator=torch.Generator().manual_seed(1))
    Y = torch.randint(0, 7, (200, 5) if cfg.sequence else (200,), generator=torch.Generator().manual_seed(2))
    return EagerStep(engine, model, opt, X, Y, 8, g)


def state(s: EagerStep) -> list[torch.Tensor]:
    return [*s.model.state_dict().values(), s.generator.get_state()]


@pytest.mark.parametrize("kind,engine,optimizer", [("mlp", "manual", "sgd"), ("mlp", "autograd", "adamw"),
                                                   ("transformer", "manual", "adamw")])
def test_window_is_the_same_steps_as_one_at_a_time(kind, engine, optimizer):
    one, win = make(kind, engine, optimizer), make(kind, engine, optimizer)
    lrs = [0.01 * (1 + i % 3) for i in range(9)]
    a = torch.stack([one(lr) for lr in lrs])
    b = torch.cat([win.window(lrs[:4]), win.window(lrs[4:])])
    assert torch.equal(a, b)
    for x, y in zip(state(one), state(win), strict=True):
        assert torch.equal(x, y)


def test_a_stopped_window_draws_only_what_its_steps_used():
    one, win = make("mlp", "manual"), make("mlp", "manual")
    calls = iter(range(100))
    losses = win.window([0.01] * 10, stop=lambda: next(calls) == 2)  # asked to stop after the third step
    assert len(losses) == 3
    assert torch.equal(torch.stack([one(0.01) for _ in range(3)]), losses)
    for x, y in zip(state(one), state(win), strict=True):
        assert torch.equal(x, y)
    assert torch.equal(one(0.01), win(0.01))  # and the next batch is the same one


def test_restore_goes_back_to_the_snapshot():
    s = make("mlp", "manual")
    snap = s.snapshot()
    before = [t.clone() for t in state(s)]
    opt_before = {k: v.clone() for k, v in s.optimizer.state_dict()["state"].get(0, {}).items()}
    s.window([0.05] * 5)
    assert not torch.equal(before[0], state(s)[0])
    s.restore(snap)
    for x, y in zip(before, state(s), strict=True):
        assert torch.equal(x, y)
    assert {k: v for k, v in s.optimizer.state_dict()["state"].get(0, {}).items()}.keys() == opt_before.keys()
    first = s(0.05)
    s.restore(snap)
    assert torch.equal(first, s(0.05))  # the same batch, the same weights, the same optimizer state


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_whole_items_train_on_the_positions_up_to_the_batchs_longest_item(kind):
    """The step leaves out the positions after the batch's longest item (padding, −1 targets): a
    causal model's loss and gradients do not depend on them."""
    from handcheck import items_batch

    fields = {"gru": dict(n_embd=4, n_hidden=8), "transformer": dict(n_embd=8, n_head=2, n_layer=1)}[kind]
    cfg = model_config(kind, vocab_size=7, block_size=12, **fields)
    X, Y = items_batch(300, 12, 7, 0)
    Y[Y.ne(-1).sum(1) > 8] = -1  # no item longer than 7 characters: a batch needs at most 8 positions
    Y[:, 0] = 0
    step = EagerStep("manual", build_model(cfg, seed=1), torch.optim.SGD([torch.zeros(1)]), X, Y, 16,
                     torch.Generator().manual_seed(5))
    seen = []
    step.compute_grads = lambda m, xb, yb: seen.append((xb, yb)) or torch.zeros(())
    step(0.1)
    (xb, yb), = seen
    assert xb.shape[1] == yb.shape[1] == int(yb.ne(-1).sum(1).max()) <= 8
    full = build_model(cfg, seed=1)
    trimmed = build_model(cfg, seed=1)
    ix = torch.arange(16)
    T = step.positions(ix)
    a = cross_entropy(full(X[ix]), Y[ix])
    a.backward()
    b = cross_entropy(trimmed(X[ix, :T]), Y[ix, :T])
    b.backward()
    torch.testing.assert_close(b, a, rtol=1e-6, atol=0)
    for pa, pb in zip(full.parameters(), trimmed.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-7)
