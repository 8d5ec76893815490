"""The last part of every model's exercise: training on the learner's own gradients, against charmlp's
manual engine (its layers' hand-written backward, nn/) trained from the same parameters on the same batches.

`engine_losses` builds the model from charmlp's own layers, copies the exercise's parameters into them
(`ENGINE_PARAMS`: the layer parameter each exercise parameter is, blocks side by side where a layer keeps
several gates in one matrix) and runs plain SGD; the learner's loop (the starter's `part2`) calls their
`part1` at every step. `name_parameter` says which parameter's gradient differs, from part 1's report.
"""

from __future__ import annotations

import torch

from .. import nn
from ..verdict import Report, Row

TRAIN_STEPS, TRAIN_LR = 200, 0.1


def _engine(model: str, P: dict[str, torch.Tensor], T: int) -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    """charmlp's layers for `model`, and {layer parameter name: its value from the exercise's parameters}."""
    V, E = P["C" if "C" in P else "wte"].shape
    cat = torch.cat
    if model == "wavenet":
        H = P["W1"].shape[1]
        net = nn.Sequential(nn.Embedding(V, E), nn.FlattenConsecutive(2), nn.Linear(2 * E, H, bias=False), nn.BatchNorm1d(H),
                            nn.Tanh(), nn.FlattenConsecutive(2), nn.Linear(2 * H, H, bias=False), nn.BatchNorm1d(H), nn.Tanh(),
                            nn.Linear(H, V))
        keys = ("C", "W1", "bngain1", "bnbias1", "W2", "bngain2", "bnbias2", "W3", "b3")
        return net, dict(zip((k for k, _ in net.named_parameters()), (P[k] for k in keys)))
    if model in ("rnn", "gru"):
        H = P["h0"].shape[0]
        cell = nn.RNNCell(E, H) if model == "rnn" else nn.GRUCell(E, H)
        net = nn.Sequential(nn.Embedding(V, E), nn.Recurrent(cell), nn.Linear(H, V))
        if model == "rnn":
            vals = {"Wx": P["Wx"], "b": P["b"], "Wh": P["Wh"]}
        else:  # GRUCell keeps the z, r, c blocks side by side: Wx (E, 3H), b (3H), Wh (H, 2H) = [Whz Whr]
            vals = {"Wx": cat((P["Wxz"], P["Wxr"], P["Wxc"]), 1), "b": cat((P["bz"], P["br"], P["bc"])),
                    "Wh": cat((P["Whz"], P["Whr"]), 1), "Wc": P["Wc"]}
        by_name = {"0.weight": P["C"], "1.h0": P["h0"], "2.weight": P["Wy"], "2.bias": P["by"],
                   **{f"1.cell.{k}": v for k, v in vals.items()}}
        return net, {k: by_name[k.removeprefix("layers.")] for k, _ in net.named_parameters()}
    from ..models.transformer_atoms import N_HEAD

    C = E
    net = nn.Sequential(nn.Embedding(V, C), nn.PositionEmbedding(T, C), nn.Block(C, N_HEAD), nn.LayerNorm(C), nn.Linear(C, V))
    for m in net.modules():  # the tensor operations, not the Numba kernels (no compilation for a short check)
        if hasattr(m, "fused"):
            m.fused = False
    keys = ("wte", "wpe", "ln1w", "ln1b", "Wqkv", "bqkv", "Wo", "bo", "ln2w", "ln2b", "W1", "b1", "W2", "b2", "lnfw", "lnfb", "Wlm", "blm")
    return net, dict(zip((k for k, _ in net.named_parameters()), (P[k] for k in keys)))


def engine_losses(model: str, params: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor, lr: float) -> list[float]:
    """charmlp's manual engine on the batches X[i], Y[i], plain SGD from `params`: the loss before each update."""
    net, values = _engine(model, params, X.shape[-1])
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(values[name])
    return sgd_losses(net, X, Y, lr)


def sgd_losses(net: nn.Sequential, X: torch.Tensor, Y: torch.Tensor, lr: float) -> list[float]:
    """Plain SGD on the batches X[i], Y[i] through `net`'s hand-written backward (p -= lr · dL/dp):
    the loss before each update. The reference every exercise's training part compares with."""
    with torch.no_grad():
        losses = []
        for Xb, Yb in zip(X, Y):
            for p in net.parameters():
                p.grad = None
            logits = net(Xb)
            losses.append(nn.cross_entropy(logits, Yb).item())
            net.backward(nn.cross_entropy_backward(logits, Yb))
            for p in net.parameters():
                p -= lr * p.grad
    return losses


def name_parameter(row: Row, part1: Report | None, params: tuple[str, ...]) -> Row:
    """A wrong training row, with the parameters whose gradient part 1 found wrong (or: the update is)."""
    if row.status != "wrong" or row.kind in ("forward", "no-update", "shape"):
        return row
    bad = [r.name for r in (part1.rows if part1 else ()) if r.name[1:] in params and r.status not in ("exact", "approximate")]
    where = (f"; the parameter{'s' * (len(bad) > 1)} whose gradient differs: {', '.join(bad)} (see part 1)" if bad else
             "; every parameter's gradient passes part 1, so look at the update (p -= lr * dp, in place)")
    return Row(row.name, row.status, row.shape, row.got_shape, row.maxdiff, diagnosis=row.diagnosis + where, kind=row.kind)
