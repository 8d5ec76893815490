"""Cross-entropy on whole items: −1 targets ignored, the mean over the real ones, and its fused
backward against autograd and float64 finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from charmlp.nn import cross_entropy, cross_entropy_backward


def items(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 5, (4, 6), generator=g)
    for i, n in enumerate((6, 3, 1, 4)):  # padding after each item's end
        Y[i, n:] = -1
    return logits, Y


@pytest.mark.parametrize("seed", range(3))
def test_whole_item_loss_is_the_mean_over_real_targets(seed):
    logits, Y = items(seed)
    keep = Y >= 0
    nll = -torch.log_softmax(logits, -1).gather(-1, Y.clamp_min(0)[..., None])[..., 0]
    assert cross_entropy(logits, Y).item() == pytest.approx((nll[keep].sum() / keep.sum()).item(), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_whole_item_backward_matches_autograd_and_finite_differences(seed):
    logits, Y = items(seed)
    x = logits.clone().requires_grad_(True)
    cross_entropy(x, Y).backward()
    d = cross_entropy_backward(logits, Y)
    torch.testing.assert_close(d, x.grad, rtol=0, atol=1e-15)
    assert (d[Y < 0] == 0).all()  # padding gets no gradient

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return F.cross_entropy(z.reshape(-1, 5), Y.reshape(-1), ignore_index=-1)

        @staticmethod
        def backward(ctx, dloss):
            (z,) = ctx.saved_tensors
            return dloss * cross_entropy_backward(z, Y)

    assert torch.autograd.gradcheck(Fused.apply, (logits.clone().requires_grad_(True),), eps=1e-6, atol=1e-8)


def test_row_targets_count_each_rows_targets_block_by_block(monkeypatch):
    from charmlp.nn import losses

    Y = torch.tensor([[3, 0, -1, -1], [0, -1, -1, -1], [1, 2, 3, 0], [2, 0, -1, -1], [1, 1, 0, -1]], dtype=torch.int16)
    monkeypatch.setattr(losses, "COUNT_ROWS", 2)  # three blocks, the last one short
    assert losses.row_targets(Y).tolist() == [2, 1, 4, 2, 3] == (Y != -1).sum(1).tolist()
    assert losses.count_targets(Y) == 12 and losses.row_targets(Y[:0]).tolist() == []
