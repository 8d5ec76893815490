"""Every model's atom chain: its by-hand steps against autograd, atom by atom, in float64."""

from __future__ import annotations

import pytest
import torch

from charmlp.models import gru_atoms, rnn_atoms, transformer_atoms, wavenet_atoms

# (module, chain, parameter arguments, positions read)
CHAINS = {
    "wavenet": (wavenet_atoms.WAVENET_CHAIN, lambda g: wavenet_atoms.parameters(27, 4, 5, 6, g), 4, False),
    "rnn": (rnn_atoms.RNN_CHAIN, lambda g: rnn_atoms.parameters(27, 5, 6, g), rnn_atoms.T, True),
    "gru": (gru_atoms.GRU_CHAIN, lambda g: gru_atoms.parameters(27, 5, 6, g), gru_atoms.T, True),
    "transformer": (transformer_atoms.TRANSFORMER_CHAIN, lambda g: transformer_atoms.parameters(27, 4, 8, g), 4, True),
}


def values(model: str, n: int = 7, seed: int = 0) -> dict:
    chain, params, T, per_position = CHAINS[model]
    g = torch.Generator().manual_seed(seed)
    P = {k: v.double() for k, v in params(g).items()}
    Xb = torch.randint(0, 27, (n, T), generator=g)
    Yb = torch.randint(0, 27, (n, T) if per_position else (n,), generator=g)
    return {"Xb": Xb, "Yb": Yb, "n": n, **P}


@pytest.mark.parametrize("model", CHAINS)
def test_by_hand_matches_autograd_in_float64(model):
    chain = CHAINS[model][0]
    v = values(model)
    F_, R = chain.reference(v)
    H = chain.by_hand({**v, **F_})
    assert set(H) == set(chain.order) | {chain.loss}
    for k in chain.order:
        assert H[k].shape == R[k].shape, k
        err = (H[k] - R[k]).abs().max().item() / R[k].abs().max().item()
        assert err < 1e-12, (k, err)


@pytest.mark.parametrize("model", CHAINS)
def test_every_gradient_is_derived_and_the_listing_has_every_atom(model):
    chain = CHAINS[model][0]
    assert set(chain.order) == set(chain.atoms[:-1]) | set(chain.params)
    lines = chain.listing()
    assert len(lines) == len(chain.atoms) and all(line.startswith(a + " = ") for line, a in zip(lines, chain.atoms))


@pytest.mark.parametrize("model,atom,via", [("rnn", "h2", "h3"), ("gru", "h1", "z2"), ("transformer", "x1", "x2")])
def test_a_branch_left_out_is_caught(model, atom, via):
    """A chain whose step drops one branch (the hidden state carried, the residual path) no longer matches autograd."""
    chain = CHAINS[model][0]
    v = values(model)
    F_, R = chain.reference(v)
    U = dict(R)
    only = {k: f for k, f in chain.branches[atom].items() if k != via}
    partial = sum(f({**v, **F_}, U) for f in only.values())
    assert (partial - R[atom]).abs().max().item() > 1e-3 * R[atom].abs().max().item()
    assert torch.allclose(chain.step(atom, {**v, **F_}, U), R[atom], rtol=1e-10, atol=1e-12)
