"""The gradient check: every hand-written gradient, tensor by tensor, against PyTorch autograd.

Part 1 (atomic): the one-hidden-layer model written as the lectures' chain of atoms
    emb → embcat → hprebn → bnmeani → bndiff → bndiff2 → bnvar → bnvar_inv → bnraw → hpreact
    → h → logits → logit_maxes → norm_logits → counts → counts_sum → counts_sum_inv → probs
    → logprobs → loss,
each atom's gradient derived by hand in reverse order and compared with the `.grad` autograd
retained on it (the exercise's `cmp` table: exact, approximate, max difference).
Part 2 (fused): the fused cross-entropy backward and BatchNorm1d's closed-form backward vs the
gradients autograd found for the same atoms.
Part 3 (layer): the configured model, any depth: every parameter's gradient and every layer's
input gradient from the manual engine vs the autograd engine.

Each row: exact (bitwise equal), approx (within the dtype's tolerance), maxdiff = max|m − a|,
rel_err = maxdiff / max|a|.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import DTYPE_NAMES, LECTURE_SEED, DataConfig, ModelConfig
from .data import Dataset, load_dataset
from .engines import autograd_grads
from .errors import CharmlpError
from .models import LanguageModel, MLPConfig, build_model, check_members_batch
from .nn import BatchNorm1d, LayerNorm, Linear, cross_entropy, cross_entropy_backward
from .verdict import json_float, shape_text

SECTIONS = ("atomic", "fused", "layer")
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
MAX_BATCH = 16_384  # enough for any check; keeps the ~30 retained activations in memory
BN_EPS = 1e-5  # the exercise's ε, also BatchNorm1d's default


@dataclass(frozen=True)
class Tolerance:
    """A row passes (approx) when max|manual − autograd| ≤ rel · max|autograd|, i.e.
    torch.allclose(manual, autograd, rtol=0, atol=rel · max|autograd|): an absolute tolerance
    scaled to the tensor, so entries that are small only by cancellation are judged fairly."""

    rel: float


# float32: ~100 ulp of the largest entry (the hand formulas group sums and products differently
# from autograd's kernels, and deeper models compound it). float64: round-off only; anything
# above 1e-10 relative means a wrong formula, not rounding.
TOLERANCES: dict[str, Tolerance] = {"float32": Tolerance(rel=1e-5), "float64": Tolerance(rel=1e-10)}

# Part 1's gradients in the order the exercise derives (and prints) them.
ATOMIC_ROWS = (
    "logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes",
    "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw", "bnvar_inv", "bnvar",
    "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "W1", "b1", "emb", "C",
)
ABOVE_TANH = ATOMIC_ROWS[: ATOMIC_ROWS.index("b2") + 1]  # the 11 rows that need no tanh backward

TANH_NOTE = (
    "every atomic row is bitwise exact: 1 − h² below the tanh is computed as one fused multiply-add "
    "(torch.addcmul), as autograd's tanh kernel does; the plain (1 − h**2)·dh rounds twice and is approximate only, "
    "and every gradient further down inherits that last-bit difference"
)
B1_NOTE = (
    "b1: BatchNorm subtracts the batch mean, so its true gradient is 0 and both sides are round-off; "
    "its rel_err is measured against Σ_batch |dhprebn|, the size of the terms that cancel"
)
BATCH2_NOTE = (
    "batch of 2: BatchNorm maps any two different inputs to about ±1/√2, so the gradient below it is "
    "only ε/δ²-sized and float32 round-off dominates both engines alike; use --dtype float64 or a batch ≥ 3"
)


@dataclass
class Row:
    """One tensor's verdict."""

    section: str  # atomic | fused | layer
    name: str
    shape: tuple[int, ...]
    exact: bool
    approx: bool
    maxdiff: float
    rel_err: float
    note: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        for k in ("maxdiff", "rel_err"):
            d[k] = json_float(d[k])
        return d


@dataclass
class GradcheckReport:
    """All rows of a check and the settings that produced them."""

    dtype: str
    seed: int
    batch_size: int
    n_layer: int
    tolerance: Tolerance
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: str = "mlp"  # the model of part 3, as `--model` names it

    @property
    def ok(self) -> bool:
        return all(r.approx for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.approx]

    def section(self, name: str) -> list[Row]:
        return [r for r in self.rows if r.section == name]

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "dtype": self.dtype,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n_layer": self.n_layer,
            "model": self.model,
            "tolerance": dataclasses.asdict(self.tolerance),
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
        }

    def format_table(self) -> str:
        """Aligned table, one row per tensor, per section."""
        t = self.tolerance
        lines = [
            f"gradcheck · {self.dtype} · batch {self.batch_size} · seed {self.seed} · model of part 3: {self.model}"
            + (f", {self.n_layer} hidden layer(s)" if self.model == "mlp" else ""),
            f"rel_err = max|manual − autograd| / max|autograd|; approx = rel_err ≤ {t.rel:g} ({self.dtype});"
            " exact = bitwise equal",
        ]
        titles = {
            "atomic": "Part 1 — the exercise's atoms, each gradient derived by hand, vs autograd's .grad",
            "fused": "Part 2 — fused backward (cross-entropy, BatchNorm1d) vs autograd",
            "layer": f"Part 3 — the {self.model} model, layer by layer: manual engine vs autograd engine",
        }
        width = max(len(r.name) for r in self.rows) + 2
        header = f"{'name':<{width}}{'shape':<14}{'exact':<7}{'approx':<8}{'maxdiff':>10}{'rel_err':>10}"
        for sec in SECTIONS:
            rows = self.section(sec)
            if not rows:
                continue
            lines += ["", titles[sec], header]
            for r in rows:
                if sec == "atomic" and r.name == ATOMIC_ROWS[len(ABOVE_TANH)]:
                    lines.append("·· tanh ·· (below: 1 − h² as a fused multiply-add, note 1)")
                shape = shape_text(r.shape)
                mark = f"  ({r.note})" if r.note else ""
                lines.append(
                    f"{r.name:<{width}}{shape:<14}{r.exact!s:<7}{r.approx!s:<8}"
                    f"{r.maxdiff:>10.1e}{r.rel_err:>10.1e}{mark}"
                )
        lines.append("")
        lines += [f"note {i}: {n}" for i, n in enumerate(self.notes, 1)]
        bad = self.failures
        lines.append(
            f"all {len(self.rows)} checks pass"
            if not bad
            else f"{len(bad)} of {len(self.rows)} checks FAILED: {', '.join(f'{r.section}/{r.name}' for r in bad)}"
        )
        return "\n".join(lines)


def compare(
    section: str, name: str, manual: torch.Tensor, reference: torch.Tensor, tol: Tolerance,
    scale: float | None = None, note: str = "",
) -> Row:
    """The verdict on `manual` against autograd's `reference`; `scale` overrides max|reference|."""
    if manual.shape != reference.shape:
        raise AssertionError(f"{section}/{name}: manual gradient has shape {tuple(manual.shape)}, "
                             f"autograd's {tuple(reference.shape)}")
    manual, reference = manual.detach(), reference.detach()
    maxdiff = (manual - reference).abs().max().item() if manual.numel() else 0.0
    if scale is None:
        scale = reference.abs().max().item() if reference.numel() else 0.0
    rel_err = maxdiff / scale if scale > 0 else (0.0 if maxdiff == 0 else math.inf)
    approx = bool(torch.allclose(manual, reference, rtol=0.0, atol=tol.rel * scale)) and rel_err <= tol.rel
    return Row(section, name, tuple(manual.shape), bool(torch.equal(manual, reference)), approx, maxdiff, rel_err, note)


def exercise_parameters(
    vocab_size: int, block_size: int, n_embd: int, n_hidden: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The exercise's parameters: C, W1, b1, W2, b2, bngain, bnbias (float32, from `generator`).

    Biases and BatchNorm's γ, β are small random numbers rather than 0 and 1, as in the
    exercise, so that a forgotten term cannot hide behind a zero or a one.
    """

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    fan_in = block_size * n_embd
    return {
        "C": randn(vocab_size, n_embd),
        "W1": randn(fan_in, n_hidden) * (5 / 3) / math.sqrt(fan_in),
        "b1": randn(n_hidden) * 0.1,
        "W2": randn(n_hidden, vocab_size) * 0.1,
        "b2": randn(vocab_size) * 0.1,
        "bngain": randn(n_hidden) * 0.1 + 1.0,
        "bnbias": randn(n_hidden) * 0.1,
    }


def atomic_check(
    params: dict[str, torch.Tensor], Xb: torch.Tensor, Yb: torch.Tensor, tol: Tolerance
) -> list[Row]:
    """Parts 1 and 2: the chain of atoms, backpropagated by hand, and the fused backward passes."""
    P = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    C, W1, b1, W2, b2, bngain, bnbias = (P[k] for k in ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias"))
    Xb, Yb = Xb.long(), Yb.long()
    n = Xb.shape[0]
    rows_n = torch.arange(n)

    # forward, one atom at a time (kept, with autograd's gradient retained on each)
    emb = C[Xb]
    embcat = emb.view(n, -1)
    hprebn = embcat @ W1 + b1
    bnmeani = hprebn.sum(0, keepdim=True) / n
    bndiff = hprebn - bnmeani
    bndiff2 = bndiff**2
    bnvar = bndiff2.sum(0, keepdim=True) / (n - 1)  # Bessel's correction, as in the lectures
    bnvar_inv = (bnvar + BN_EPS) ** -0.5
    bnraw = bndiff * bnvar_inv
    hpreact = bngain * bnraw + bnbias
    h = torch.tanh(hpreact)
    logits = h @ W2 + b2
    logit_max = logits.max(1, keepdim=True)
    logit_maxes = logit_max.values
    norm_logits = logits - logit_maxes  # for numerical stability; does not change the loss
    counts = norm_logits.exp()
    counts_sum = counts.sum(1, keepdim=True)
    counts_sum_inv = counts_sum**-1
    probs = counts * counts_sum_inv
    logprobs = probs.log()
    loss = -logprobs[rows_n, Yb].mean()
    atoms = dict(
        emb=emb, embcat=embcat, hprebn=hprebn, bnmeani=bnmeani, bndiff=bndiff, bndiff2=bndiff2, bnvar=bnvar,
        bnvar_inv=bnvar_inv, bnraw=bnraw, hpreact=hpreact, h=h, logits=logits, logit_maxes=logit_maxes,
        norm_logits=norm_logits, counts=counts, counts_sum=counts_sum, counts_sum_inv=counts_sum_inv,
        probs=probs, logprobs=logprobs,
    )
    for t in atoms.values():
        t.retain_grad()
    loss.backward()
    auto = {**{k: t.grad for k, t in atoms.items()}, **{k: p.grad for k, p in P.items()}}

    # backward by hand, atom by atom (no autograd involved)
    with torch.no_grad():
        d: dict[str, torch.Tensor] = {}
        # loss = −(1/n) Σ_i logprobs[i, y_i]  →  dlogprobs = −1/n at (i, y_i), 0 elsewhere
        d["logprobs"] = torch.zeros_like(logprobs)
        d["logprobs"][rows_n, Yb] = -1.0 / n
        # logprobs = log(probs)  →  dprobs = dlogprobs / probs
        d["probs"] = d["logprobs"] / probs
        # probs = counts · counts_sum_inv (broadcast along the row)  →  dcounts_sum_inv = Σ_row counts·dprobs
        d["counts_sum_inv"] = (counts * d["probs"]).sum(1, keepdim=True)
        # counts_sum_inv = counts_sum⁻¹  →  dcounts_sum = −counts_sum⁻² · dcounts_sum_inv
        d["counts_sum"] = -(counts_sum**-2) * d["counts_sum_inv"]
        # counts feeds probs (dcounts = counts_sum_inv·dprobs) and counts_sum = Σ_row counts (+ dcounts_sum)
        d["counts"] = counts_sum_inv * d["probs"] + d["counts_sum"]
        # counts = exp(norm_logits)  →  dnorm_logits = counts · dcounts
        d["norm_logits"] = counts * d["counts"]
        # norm_logits = logits − logit_maxes  →  dlogit_maxes = −Σ_row dnorm_logits
        d["logit_maxes"] = -d["norm_logits"].sum(1, keepdim=True)
        # logits feeds norm_logits (×1) and logit_maxes = max_row logits (only at the arg max)
        d["logits"] = d["norm_logits"] + F.one_hot(logit_max.indices.squeeze(1), logits.shape[1]) * d["logit_maxes"]
        # logits = h @ W2 + b2  →  dh = dlogits·W2ᵀ, dW2 = hᵀ·dlogits, db2 = Σ_batch dlogits
        d["h"] = d["logits"] @ W2.T
        d["W2"] = h.T @ d["logits"]
        d["b2"] = d["logits"].sum(0)
        # h = tanh(hpreact)  →  dhpreact = (1 − h²) · dh, with 1 − h² as one fused multiply-add
        # (addcmul: 1 + (−1)·h·h rounded once), the way autograd's tanh kernel computes it
        d["hpreact"] = torch.addcmul(torch.ones_like(h), h, h, value=-1.0) * d["h"]
        # hpreact = bngain·bnraw + bnbias  →  dbngain = Σ_batch bnraw·dhpreact, dbnbias = Σ_batch dhpreact
        d["bngain"] = (bnraw * d["hpreact"]).sum(0)
        d["bnbias"] = d["hpreact"].sum(0)
        d["bnraw"] = bngain * d["hpreact"]
        # bnraw = bndiff · bnvar_inv  →  dbnvar_inv = Σ_batch bndiff·dbnraw
        d["bnvar_inv"] = (bndiff * d["bnraw"]).sum(0, keepdim=True)
        # bnvar_inv = (bnvar + ε)^(−1/2)  →  dbnvar = −½·(bnvar + ε)^(−3/2) · dbnvar_inv
        d["bnvar"] = -0.5 * (bnvar + BN_EPS) ** -1.5 * d["bnvar_inv"]
        # bnvar = Σ_batch bndiff2 / (n − 1)  →  dbndiff2 = dbnvar / (n − 1), the same for every row
        d["bndiff2"] = torch.ones_like(bndiff2) * d["bnvar"] / (n - 1)
        # bndiff feeds bnraw (dbndiff = bnvar_inv·dbnraw) and bndiff2 = bndiff² (+ 2·bndiff·dbndiff2)
        d["bndiff"] = bnvar_inv * d["bnraw"] + 2.0 * bndiff * d["bndiff2"]
        # bndiff = hprebn − bnmeani  →  dbnmeani = −Σ_batch dbndiff
        d["bnmeani"] = -d["bndiff"].sum(0, keepdim=True)
        # hprebn feeds bndiff (×1) and bnmeani = Σ_batch hprebn / n (+ dbnmeani / n)
        d["hprebn"] = d["bndiff"] + d["bnmeani"] / n
        # hprebn = embcat @ W1 + b1  →  dembcat = dhprebn·W1ᵀ, dW1 = embcatᵀ·dhprebn, db1 = Σ_batch dhprebn
        d["embcat"] = d["hprebn"] @ W1.T
        d["W1"] = embcat.T @ d["hprebn"]
        d["b1"] = d["hprebn"].sum(0)
        # embcat = emb viewed as (n, block·n_embd)  →  demb = dembcat viewed back
        d["emb"] = d["embcat"].view(emb.shape)
        # emb = C[Xb]  →  dC[c] = Σ of demb over every position holding character c
        d["C"] = torch.zeros_like(C).index_add_(0, Xb.reshape(-1), d["emb"].reshape(-1, C.shape[1]))

        rows = []
        for name in ATOMIC_ROWS:
            scale, note = None, ""
            if name == "b1":  # Σ_batch of terms that cancel exactly: judge against their size
                scale, note = auto["hprebn"].abs().sum(0).max().item(), "note 2"
            rows.append(compare("atomic", name, d[name], auto[name], tol, scale=scale, note=note))

        # Part 2: the fused expressions the manual engine uses, fed autograd's own upstream gradients
        rows.append(compare("fused", "logits (cross_entropy_backward)", cross_entropy_backward(logits, Yb),
                            auto["logits"], tol))
        bn = BatchNorm1d(hprebn.shape[1], eps=BN_EPS).to(hprebn.dtype)
        bn.weight.copy_(bngain)
        bn.bias.copy_(bnbias)
        bn.train()
        bn(hprebn)
        dx = bn.backward(auto["hpreact"])
        rows.append(compare("fused", "hprebn (BatchNorm1d.backward)", dx, auto["hprebn"], tol))
        rows.append(compare("fused", "bngain (BatchNorm1d.backward)", bn.weight.grad, auto["bngain"], tol))
        rows.append(compare("fused", "bnbias (BatchNorm1d.backward)", bn.bias.grad, auto["bnbias"], tol))
    return rows


@torch.no_grad()
def perturb_parameters(model: LanguageModel, generator: torch.Generator) -> None:
    """Move biases and BatchNorm's and LayerNorm's γ, β off their initial 0s and 1s (a wrong
    formula that only multiplies by γ or adds β would otherwise pass), in layers nested inside
    others too (a transformer's blocks)."""
    for m in model.modules():
        if isinstance(m, (BatchNorm1d, LayerNorm)):
            m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=generator).to(m.weight))
            m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=generator).to(m.bias))
        elif isinstance(m, Linear) and m.bias is not None:
            m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=generator).to(m.bias))


def layer_check(model: LanguageModel, Xb: torch.Tensor, Yb: torch.Tensor, tol: Tolerance) -> list[Row]:
    """Part 3: per layer, the manual engine's parameter and input gradients vs autograd's.

    `model` is left untouched (each engine works on its own copy, since training-mode
    BatchNorm moves its running statistics on every forward).
    """
    auto_model, manual_model = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    layers = list(auto_model.layers)

    # autograd engine; a forward hook retains the gradient of every layer's output
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: (out.retain_grad(), outputs.append(out))[-1])
             for m in layers]
    try:
        autograd_grads(auto_model, Xb, Yb)
    finally:
        for hk in hooks:
            hk.remove()
    # input gradient of layer i = gradient of layer i − 1's output; the loss's input = the logits
    auto_dx = [None] + [o.grad for o in outputs[:-1]]
    auto_dlogits = outputs[-1].grad

    # manual engine: the same walk as `Sequential.backward`, keeping every layer's input gradient
    for p in manual_model.parameters():
        p.grad = None
    with torch.no_grad():
        logits = manual_model(Xb)
        cross_entropy(logits, Yb)
        dout = dlogits = cross_entropy_backward(logits, Yb)
        manual_dx: list[torch.Tensor | None] = [None] * len(layers)
        for i in reversed(range(len(layers))):
            dout = manual_dx[i] = manual_model.layers[i].backward(dout)

    rows = [compare("layer", "loss → logits", dlogits, auto_dlogits, tol)]
    for i in reversed(range(len(layers))):
        a, m = layers[i], manual_model.layers[i]
        # a layer may name itself (`label`, e.g. a transformer's "block0"); nested parameters keep their path
        label = f"[{i}] {getattr(a, 'label', None) or type(a).__name__}"
        manual_params = dict(m.named_parameters())
        for pname, pa in a.named_parameters():  # a layer's sub-modules' too (a recurrent layer's cell, a block's)
            rows.append(compare("layer", f"{label}.{pname}", manual_params[pname].grad, pa.grad, tol))
        if i > 0:  # the first layer's input is character ids
            rows.append(compare("layer", f"{label} input", manual_dx[i], auto_dx[i], tol))
    return rows


def validate_gradcheck_args(dtype: str, seed: int, batch_size: int, n_layer: int) -> None:
    """Raise a user error for settings the check cannot run with."""
    if dtype not in DTYPES:
        raise CharmlpError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not 0 <= seed < 2**63:
        raise CharmlpError(f"--seed must be between 0 and {2**63 - 1}, got {seed}")
    if batch_size < 2:
        raise CharmlpError(
            f"--batch-size must be at least 2, got {batch_size}: BatchNorm's batch variance divides by n − 1"
        )
    if batch_size > MAX_BATCH:
        raise CharmlpError(f"--batch-size must be at most {MAX_BATCH} for the gradient check, got {batch_size}")
    if not 0 <= n_layer <= 64:
        raise CharmlpError(f"--n-layer must be between 0 and 64, got {n_layer}")


def gradcheck(
    dtype: str = "float32",
    seed: int = LECTURE_SEED,
    batch_size: int = 32,
    n_layer: int = 1,
    dataset: Dataset | None = None,
    n_embd: int = 10,
    n_hidden: int = 200,
    model: ModelConfig | None = None,
) -> GradcheckReport:
    """Check every hand-written gradient against autograd on one seeded batch of `dataset`
    (default: the embedded names). Returns the report; `report.ok` is False if any row fails.

    Parts 1 and 2 (the exercise's atoms, the fused backward) belong to the lectures' MLP and run
    when `model` is None or an MLP; part 3 checks `model` (default: the MLP of `n_embd`,
    `n_hidden`, `n_layer`) layer by layer, its block size and vocabulary set from `dataset`."""
    validate_gradcheck_args(dtype, seed, batch_size, n_layer)
    mcfg = model if model is not None else MLPConfig(n_embd=n_embd, n_hidden=n_hidden, n_layer=n_layer)
    check_members_batch(batch_size, getattr(mcfg, "members", 1))
    dataset = dataset or load_dataset(DataConfig(block_size=0 if mcfg.sequence else mcfg.block_size, sequence=mcfg.sequence))
    tdtype, tol = DTYPES[dtype], TOLERANCES[dtype]
    V, T = dataset.vocab.size, dataset.block_size
    g = torch.Generator().manual_seed(seed)

    # one generator: the exercise's parameters, then the batch, then the model
    params = exercise_parameters(V, T, n_embd, n_hidden, g)
    Xtr, Ytr = dataset.X["train"], dataset.Y["train"]
    ix = torch.randint(0, len(Ytr), (batch_size,), generator=g)
    Xb, Yb = Xtr[ix].long(), Ytr[ix].long()
    mcfg = dataclasses.replace(mcfg, vocab_size=V, block_size=T)
    net = build_model(mcfg, generator=g)
    perturb_parameters(net, g)

    exercise = mcfg.kind == "mlp"
    rows = atomic_check({k: v.to(tdtype) for k, v in params.items()}, Xb, Yb, tol) if exercise else []
    rows += layer_check(net.to(tdtype), Xb, Yb, tol)
    notes = [TANH_NOTE, B1_NOTE] if exercise else []
    notes += [BATCH2_NOTE] if batch_size == 2 and dtype == "float32" else []
    return GradcheckReport(dtype, seed, batch_size, getattr(mcfg, "n_layer", n_layer), tol, rows, notes, mcfg.kind)
