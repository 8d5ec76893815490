"""The lectures' own code paths, written out plainly, as the baselines charmlp is measured against.

Nothing here uses charmlp's layers or engines: raw tensors, autograd, one minibatch of 32 per
Python iteration, one name at a time, one character at a time — the way the makemore lectures
(part 3, the MLP with BatchNorm) write them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SEED = 2147483647


@dataclass
class BaselineModel:
    """Parameters and BatchNorm statistics of the lectures' MLP (n_embd 10, n_hidden 200)."""

    C: torch.Tensor
    W1: torch.Tensor
    W2: torch.Tensor
    b2: torch.Tensor
    bngain: torch.Tensor
    bnbias: torch.Tensor
    bnmean: torch.Tensor  # running estimates, then calibrated over the training set
    bnstd: torch.Tensor
    lossi: list[float] = field(default_factory=list)
    seconds_at: dict[int, float] = field(default_factory=dict)  # step → wall seconds since start

    @property
    def parameters(self) -> list[torch.Tensor]:
        return [self.C, self.W1, self.W2, self.b2, self.bngain, self.bnbias]


def init_model(g: torch.Generator, vocab_size: int = 27, block_size: int = 3, n_embd: int = 10,
               n_hidden: int = 200) -> BaselineModel:
    C = torch.randn((vocab_size, n_embd), generator=g)
    W1 = torch.randn((n_embd * block_size, n_hidden), generator=g) * (5 / 3) / (n_embd * block_size) ** 0.5
    W2 = torch.randn((n_hidden, vocab_size), generator=g) * 0.01
    b2 = torch.randn(vocab_size, generator=g) * 0
    m = BaselineModel(C, W1, W2, b2, torch.ones((1, n_hidden)), torch.zeros((1, n_hidden)),
                      torch.zeros((1, n_hidden)), torch.ones((1, n_hidden)))
    for p in m.parameters:
        p.requires_grad = True
    return m


def train_loop(m: BaselineModel, Xtr: torch.Tensor, Ytr: torch.Tensor, g: torch.Generator, max_steps: int,
               batch_size: int = 32, record_every: int = 10_000) -> float:
    """The lectures' training loop; returns its wall seconds. lr 0.1, then 0.01 after 100k steps."""
    t0 = time.perf_counter()
    for i in range(max_steps):
        # minibatch
        ix = torch.randint(0, Xtr.shape[0], (batch_size,), generator=g)
        Xb, Yb = Xtr[ix], Ytr[ix]
        # forward pass
        emb = m.C[Xb]
        embcat = emb.view(emb.shape[0], -1)
        hpreact = embcat @ m.W1
        bnmeani = hpreact.mean(0, keepdim=True)
        bnstdi = hpreact.std(0, keepdim=True)
        hpreact = m.bngain * (hpreact - bnmeani) / bnstdi + m.bnbias
        with torch.no_grad():
            m.bnmean = 0.999 * m.bnmean + 0.001 * bnmeani
            m.bnstd = 0.999 * m.bnstd + 0.001 * bnstdi
        h = torch.tanh(hpreact)
        logits = h @ m.W2 + m.b2
        loss = F.cross_entropy(logits, Yb)
        # backward pass
        for p in m.parameters:
            p.grad = None
        loss.backward()
        # update
        lr = 0.1 if i < 100_000 else 0.01
        for p in m.parameters:
            p.data += -lr * p.grad
        # track stats
        m.lossi.append(loss.log10().item())
        if (i + 1) % record_every == 0:
            m.seconds_at[i + 1] = time.perf_counter() - t0
    return time.perf_counter() - t0


@torch.no_grad()
def calibrate(m: BaselineModel, Xtr: torch.Tensor) -> None:
    """BatchNorm statistics over the whole training set, after training."""
    hpreact = m.C[Xtr].view(Xtr.shape[0], -1) @ m.W1
    m.bnmean = hpreact.mean(0, keepdim=True)
    m.bnstd = hpreact.std(0, keepdim=True)


@torch.no_grad()
def split_loss(m: BaselineModel, X: torch.Tensor, Y: torch.Tensor) -> float:
    emb = m.C[X]
    hpreact = emb.view(emb.shape[0], -1) @ m.W1
    hpreact = m.bngain * (hpreact - m.bnmean) / m.bnstd + m.bnbias
    logits = torch.tanh(hpreact) @ m.W2 + m.b2
    return F.cross_entropy(logits, Y).item()


def lecture_forward(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The lectures' sampling forward (raw tensors, BatchNorm with running statistics) for the
    weights of a trained one-hidden-layer charmlp model with BatchNorm, so both samplers draw
    from the same distribution."""
    emb_layer, _, lin, bn, _, out = list(model.layers)
    C, W1, W2, b2 = emb_layer.weight.detach(), lin.weight.detach(), out.weight.detach(), out.bias.detach()
    bngain, bnbias = bn.weight.detach(), bn.bias.detach()
    bnmean, bnstd = bn.running_mean, torch.sqrt(bn.running_var + bn.eps)

    def forward(x: torch.Tensor) -> torch.Tensor:
        emb = C[x]
        embcat = emb.view(emb.shape[0], -1)
        hpreact = embcat @ W1
        hpreact = bngain * (hpreact - bnmean) / bnstd + bnbias
        h = torch.tanh(hpreact)
        return h @ W2 + b2

    return forward


@torch.no_grad()
def sample_one_at_a_time(forward, n: int, block_size: int, g: torch.Generator) -> list[list[int]]:
    """The lectures' sampling loop: one name at a time, one character per forward pass."""
    out_all = []
    for _ in range(n):
        out = []
        context = [0] * block_size
        while True:
            logits = forward(torch.tensor([context]))
            probs = F.softmax(logits, dim=1)
            ix = torch.multinomial(probs, num_samples=1, generator=g).item()
            context = context[1:] + [ix]
            if ix == 0:
                break
            out.append(ix)
        out_all.append(out)
    return out_all


def read_and_split(path: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The lectures' data preparation: read, vocabulary, random.seed(42) shuffle, 80/10/10."""
    words = open(path, encoding="utf-8").read().splitlines()
    chars = sorted(list(set("".join(words))))
    stoi = {s: i + 1 for i, s in enumerate(chars)}
    stoi["."] = 0
    random.seed(42)
    random.shuffle(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    return {"train": words[:n1], "val": words[n1:n2], "test": words[n2:]}, stoi


def build_dataset(words: list[str], stoi: dict[str, int], block_size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The lectures' context windows: one Python iteration per character."""
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(X), torch.tensor(Y)
