"""The backprop exercise, checked: a seeded batch and model, the forward broken into the exercise's
atoms, autograd's gradient of every atom, and a diagnosis for each gradient a learner derives.

    ex = Backprop(seed=42)
    dlogprobs = torch.zeros_like(ex.logprobs); dlogprobs[range(ex.n), ex.Yb] = -1 / ex.n
    ex.check(dlogprobs=dlogprobs)        # a Report: .ok, .rows, text or an HTML table in Jupyter

The diagnosis is the shared engine's (`diagnose.py`: shape, sign, transpose, one branch of a variable
used twice, known slips, a named constant factor); what a chain of atoms adds is said here: a gradient
right for the learner's own upstream gradients is inherited (the error is upstream), and a second
mistake is measured against what the learner's upstream gives. The atoms and their chain-rule steps
are `models/mlp_atoms.py`'s.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..config import LECTURE_SEED, DataConfig
from ..errors import CharmlpError
from ..models.atoms import AtomChain
from ..models.mlp_atoms import MLP_CHAIN, ORDER, PARAMS, judge_scale, parameters
from ..verdict import Report, Row, close
from .diagnose import MATCH_TOL, REL_TOL, Clues, Part, Slip, ratio_name, repeated_index
from .diagnose import diagnose as engine_diagnose

ATOMS = ORDER  # the exercise's order: logprobs … C
FORWARD = MLP_CHAIN.atoms  # emb … logprobs, loss
__all__ = ["ATOMS", "FORWARD", "PARAMS", "Backprop", "diagnose"]
# which atoms each part checks (part 4 is a training loop, checked by its losses)
PART_ATOMS = {1: ATOMS, 2: ("logits",), 3: ("hprebn",)}


@functools.lru_cache(maxsize=1)
def _names():
    from ..data import load_dataset

    return load_dataset(DataConfig())


def _known_slips(atom: str, F_: dict, U: dict) -> list[Slip]:
    """Mistakes typical of one atom; U: the gradients of what it feeds (the learner's where usable)."""
    n, out = F_["n"], []
    if atom == "logprobs":
        out.append(Slip("dense", "the loss picks logprobs[range(n), Yb] only: every other entry's gradient is 0",
                        torch.full_like(F_["logprobs"], -1.0 / n)))
    if atom == "logits":  # the fused cross-entropy
        out.append(Slip("onehot", "forgot to subtract 1 at the target: dlogits = (softmax(logits) − onehot(Yb)) / n",
                        F.softmax(F_["logits"], 1) / n))
    if atom == "hpreact":
        h, dh = F_["h"], U["h"]
        out.append(Slip("tanh", "d tanh(x)/dx = 1 − tanh(x)², i.e. (1 − h**2) · dh; you have (1 − h) · dh", (1 - h) * dh))
        out.append(Slip("tanh", "1 − h² uses h = tanh(hpreact), the output, not hpreact itself", (1 - F_["hpreact"] ** 2) * dh))
    if atom == "hprebn":  # the fused BatchNorm backward, given dhpreact
        g, r, d = F_["bngain"], F_["bnraw"], U["hpreact"]
        k = g * F_["bnvar_inv"]
        out.append(Slip("bessel", "Bessel's correction: the forward's variance divides by n − 1, so the last term is "
                                  "n/(n − 1)·bnraw·Σ(dhpreact·bnraw), not bnraw·Σ(dhpreact·bnraw)",
                        k / n * (n * d - d.sum(0) - r * (d * r).sum(0))))
        out.append(Slip("branch", "only the direct path bngain·bnvar_inv·dhpreact: the batch mean and variance depend on "
                                  "hprebn too", k * d))
        out.append(Slip("branch", "the batch mean's term is missing: subtract Σ_batch dhpreact (the mean depends on hprebn)",
                        k / n * (n * d - n / (n - 1) * r * (d * r).sum(0))))
        out.append(Slip("branch", "the batch variance's term is missing: subtract n/(n − 1)·bnraw·Σ(dhpreact·bnraw) (the "
                                  "variance depends on hprebn)", k / n * (n * d - d.sum(0))))
    if atom == "C":  # dC[Xb] += demb keeps one row of each repeated character
        out.append(Slip("repeated", "a character that occurs more than once in Xb gets only one of its demb rows: dC[Xb] += demb "
                                    "does not accumulate repeated indices; use dC.index_add_(0, Xb.view(-1), demb.view(-1, "
                                    "C.shape[1])) (or a loop that adds)",
                        test=lambda g: repeated_index(g, U["C_true"], F_["Xb"], U["emb"])))
    return out


def _ratio(k: float, F_: dict, r: torch.Tensor, chain: AtomChain) -> str | None:
    """The name of a factor k: against the batch n, or (the other models) against the rows N of the atom,
    every dimension but the last (a BatchNorm over (B, T, C) averages over N = B·T rows)."""
    name = ratio_name(k, F_["n"])
    if name is None and chain is not MLP_CHAIN and r.dim() >= 2 and r.numel() // r.shape[-1] > F_["n"]:
        N, n = r.numel() // r.shape[-1], F_["n"]
        name = ratio_name(k, N, "N")
        if name is None and abs(k - N / n) <= 1e-3 * N / n:  # a per-position loss divided by the batch only
            name = f"{N // n} times too large: the loss is the mean over all N = {N} targets (n·T), not over n = {n}"
    return name


def _times(k: int) -> str:
    return "twice" if k == 2 else f"{k} times"


def _usable(g, r: torch.Tensor) -> bool:
    return isinstance(g, torch.Tensor) and tuple(g.shape) == tuple(r.shape) and bool(torch.isfinite(g).all())


def _names_of(atoms: list[str]) -> str:
    return " and ".join("d" + u for u in atoms)


def _is(names) -> str:
    return "is" if len(names) == 1 else "are"


def diagnose(atom: str, g, F_: dict, R: dict, L: dict, scale: float | None = None, rel: float = REL_TOL,
             match: float = MATCH_TOL, chain: AtomChain = MLP_CHAIN) -> Row:
    """The row for the learner's gradient `g` of `atom`; R: true gradients, L: the learner's (by atom);
    `chain`: the exercise's atoms and their chain-rule steps (the MLP's unless given).

    The engine is the shared one (`diagnose.py`); what is particular to a chain of atoms is said here: a
    gradient that is right for the learner's own upstream gradients is marked inherited (fix those first),
    and a second mistake is measured against what the learner's upstream gives."""
    r = R[atom]
    mlp = chain is MLP_CHAIN
    ups, fn = chain.local.get(atom, ((), None))
    learner = {u: L[u] for u in ups if isinstance(L.get(u), torch.Tensor)}
    # the learner's own upstream gradients, where they gave them with the right shape
    U = {u: (L[u].detach().to(r.dtype) if _usable(L.get(u), R[u]) else R[u]) for u in ups}
    wrong_up = [u for u in ups if _usable(L.get(u), R[u]) and not close(L[u].to(r.dtype), R[u], REL_TOL)]

    def inherited_shape(_g):
        bad = [u for u, v in learner.items() if v.shape != R[u].shape]
        return f"follows from the wrong shape of {_names_of(bad)}; fix {_names_of(bad)} first" if bad else None

    def inherited_nonfinite(_g):
        bad = [u for u, v in learner.items() if v.shape == R[u].shape and not torch.isfinite(v).all()]
        return _names_of(bad) if bad else None

    def inherited(g_):
        if fn is not None and wrong_up and close(g_, fn(F_, U), MATCH_TOL):
            us = _names_of(wrong_up)
            return f"correct for your {us}, which {_is(wrong_up)} wrong: check {us} first"
        # an upstream gradient of the wrong shape that still broadcasts: is g what it gives?
        odd = [u for u, v in learner.items() if v.shape != R[u].shape]
        if fn is not None and odd:
            try:
                mine = fn(F_, {**U, **{u: L[u].detach().to(r.dtype) for u in odd}})
            except (RuntimeError, ValueError, IndexError):
                mine = None
            if isinstance(mine, torch.Tensor) and close(g_, mine, MATCH_TOL):
                return f"correct for your {_names_of(odd)}, whose shape is wrong: fix {_names_of(odd)} first"
        return None

    def relative(_g):
        return (fn(F_, U), _names_of(wrong_up)) if fn is not None and wrong_up else None

    def approx(_g):
        if atom == "hpreact" and mlp:
            return "rounding", ("approximate only because (1 − h**2) rounds twice; autograd computes 1 − h² as one fused "
                                "multiply-add: torch.addcmul(torch.ones_like(h), h, h, value=-1) * dh gives its bits. Nothing to fix")
        off = [u for u in ups if isinstance(L.get(u), torch.Tensor) and not torch.equal(L[u], R[u])]
        if off:
            return "rounding", f"approximate: inherits the round-off of d{off[0]}"
        return "rounding", "approximate: round-off (operations grouped differently from autograd's)"

    FU = {**R, **U}
    branches = chain.branches.get(atom, {})
    others = lambda via: " and ".join(v for v in branches if v != via)  # noqa: E731
    k = len(branches)
    parts = [Part(f"the contribution through {via}", f(F_, FU),
                  only=f"only the contribution through {via}: {atom} is used {_times(k)} in the forward (also by "
                       f"{others(via)}), so d{atom} is the sum of {'both' if k == 2 else 'all its'} branches",
                  missing="" if k == 2 else f"the contribution through {via} is missing: {atom} is used {k} times in the "
                                            f"forward ({', '.join(branches)}), so d{atom} is the sum of all {k} branches")
             for via, f in branches.items()]
    slips = _known_slips(atom, F_, {**FU, "C_true": R["C"]}) if mlp else []  # the MLP's own slips
    clues = Clues(n=F_["n"], what=atom, parts=parts, slips=slips, scale=scale, rel=rel, match=match,
                  ratio=lambda k_: _ratio(k_, F_, r, chain),
                  unknown=f"wrong, and not one of the common mistakes: derive it again from the forward line that makes {atom}",
                  nonfinite="a division by zero, or log/exp of an extreme value?" + (" (probs can be tiny: use counts_sum_inv "
                                                                                    "as in the forward)" if mlp else ""),
                  approx=approx, inherited_shape=inherited_shape, inherited_nonfinite=inherited_nonfinite,
                  inherited=inherited, relative=relative)
    return engine_diagnose("d" + atom, g, r, clues)


class Backprop:
    """The exercise's seeded batch, parameters and forward tensors, and checks of a learner's gradients.

    Attributes: Xb, Yb, n; the parameters C, W1, b1, W2, b2, bngain, bnbias; every forward tensor by its
    exercise name (emb … logprobs, loss). `check(dlogprobs=…, dprobs=…)` returns a Report.
    """

    def __init__(self, seed: int = LECTURE_SEED, batch_size: int = 32, n_embd: int = 10, n_hidden: int = 64) -> None:
        if not 0 <= seed < 2**63:
            raise CharmlpError(f"seed must be between 0 and {2**63 - 1}, got {seed}")
        if not 3 <= batch_size <= 4096:
            raise CharmlpError(f"batch_size must be between 3 and 4096, got {batch_size}")
        ds = _names()
        g = torch.Generator().manual_seed(seed)
        P = parameters(ds.vocab.size, ds.block_size, n_embd, n_hidden, g)
        P["bngain"], P["bnbias"] = P["bngain"].view(1, -1), P["bnbias"].view(1, -1)  # (1, n_hidden) as in the lecture
        ix = torch.randint(0, len(ds.Y["train"]), (batch_size,), generator=g)
        self.seed, self.n = seed, batch_size
        self.Xb, self.Yb = ds.X["train"][ix].long(), ds.Y["train"][ix].long()
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = ds.vocab.size, ds.block_size, n_embd, n_hidden
        self.params = P
        # autograd's gradient of every atom (retained) is the reference
        self.forward_tensors, self.grads = MLP_CHAIN.reference({"Xb": self.Xb, "Yb": self.Yb, "n": self.n, **P})
        for k, v in {**P, **self.forward_tensors}.items():
            setattr(self, k, v)

    def tensors(self) -> dict[str, torch.Tensor | int]:
        """Everything a learner's function may ask for by name: batch, n, parameters, forward tensors."""
        return {"Xb": self.Xb, "Yb": self.Yb, "n": self.n, **self.params, **self.forward_tensors}

    def check(self, part: int | None = None, **grads) -> Report:
        """Check the gradients given (named dX for atom X); `part` 2/3 checks the fused dlogits/dhprebn only."""
        unknown = [k for k in grads if not (k.startswith("d") and k[1:] in ATOMS)]
        if unknown:
            raise CharmlpError(f"unknown gradient name(s) {', '.join(unknown)}; the exercise's are "
                               + ", ".join("d" + a for a in ATOMS))
        # part None: whatever is given, in the exercise's order
        atoms = PART_ATOMS[part] if part else tuple(a for a in ATOMS if "d" + a in grads)
        L = {k[1:]: v for k, v in grads.items() if v is not None}
        F_ = self.tensors()
        rows = []
        for atom in atoms:
            # part 2 and 3 are fused: judge them on their own, not by the atoms they skip
            Lp = L if part in (None, 1) else {atom: L.get(atom)}
            scale = judge_scale(atom, self.grads)  # db1: 0 up to round-off, judged against the terms that cancel
            rows.append(diagnose(atom, L.get(atom), F_, self.grads, Lp, scale))
        title = {None: "backprop exercise", 1: "part 1: every atom's gradient", 2: "part 2: the fused cross-entropy backward",
                 3: "part 3: the fused BatchNorm backward"}[part]
        return Report(f"{title} (seed {self.seed}, batch {self.n})", rows)
