"""BigramTable: logits looked up by the previous character; backward scatters into its rows."""

from __future__ import annotations

import copy

import torch

from charmlp.nn import BigramTable


class TableFn(torch.autograd.Function):
    """logits = table(ids; W) with the gradient given by `BigramTable.backward`."""

    @staticmethod
    def forward(ctx, table: BigramTable, idx: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            table.weight.copy_(W)
            out = table(idx)
        ctx.table = copy.deepcopy(table)
        return out.clone()

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        table = ctx.table
        table.weight.grad = None
        with torch.no_grad():
            assert table.backward(dout) is None
        return None, None, table.weight.grad


def test_bigram_table_backward_matches_finite_differences_with_repeated_ids():
    table = BigramTable(5).double()
    W = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    idx = torch.tensor([[0, 1], [3, 1], [2, 4], [1, 4], [4, 4]])  # last column: 1, 1, 4, 4, 4 (repeats accumulate)
    assert torch.autograd.gradcheck(lambda w: TableFn.apply(table, idx, w), (W,), eps=1e-6, atol=1e-7)


def test_bigram_table_reads_the_last_id_of_each_window():
    table = BigramTable(4).double()
    with torch.no_grad():
        table.weight.copy_(torch.arange(16, dtype=torch.float64).reshape(4, 4))
        out = table(torch.tensor([[3, 0, 2], [1, 1, 1]], dtype=torch.uint8))
        assert torch.equal(out, table.weight[[2, 1]])
        table.backward(torch.ones(2, 4, dtype=torch.float64))
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[[1, 2]] = 1.0
    assert torch.equal(table.weight.grad, expected)
