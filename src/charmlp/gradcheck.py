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
from dataclasses import dataclass

import torch

from .config import DTYPE_NAMES, LECTURE_SEED, DataConfig, ModelConfig
from .data import Dataset, load_dataset
from .engines import autograd_grads
from .errors import CharmlpError
from .models import LanguageModel, MLPConfig, build_model, check_members_batch
from .models.mlp_atoms import BN_EPS, MLP_CHAIN, ORDER, judge_scale
from .models.mlp_atoms import parameters as exercise_parameters
from .nn import BatchNorm1d, LayerNorm, Linear, cross_entropy, cross_entropy_backward
from .verdict import Report, Row, judge

SECTIONS = ("atomic", "fused", "layer")
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
MAX_BATCH = 16_384  # enough for any check; keeps the ~30 retained activations in memory


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

ATOMIC_ROWS = ORDER  # part 1's gradients in the order the exercise derives (and prints) them
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


SECTION_TITLES = {
    "atomic": "Part 1 — the exercise's atoms, each gradient derived by hand, vs autograd's .grad",
    "fused": "Part 2 — fused backward (cross-entropy, BatchNorm1d) vs autograd",
    "layer": "Part 3 — the {model} model, layer by layer: manual engine vs autograd engine",
}


class GradcheckReport(Report):
    """The gradient check's rows (the one `Row`/`Report` of every check) and the settings that produced
    them, shown as its own table: exact, approx, max difference and relative error per tensor, per part."""

    columns = (("shape", 14), ("exact", 7), ("approx", 8), ("maxdiff", 10), ("rel_err", 10))
    text_heading = ""

    def __init__(self, dtype: str, seed: int, batch_size: int, n_layer: int, tolerance: Tolerance,
                 rows: list[Row] | None = None, notes: list[str] | None = None, model: str = "mlp") -> None:
        self.dtype, self.seed, self.batch_size, self.n_layer, self.tolerance, self.model = \
            dtype, seed, batch_size, n_layer, tolerance, model
        sections = {sec: title.format(model=model) for sec, title in SECTION_TITLES.items()}
        settings = {"dtype": dtype, "seed": seed, "batch_size": batch_size, "n_layer": n_layer, "model": model,
                    "tolerance": dataclasses.asdict(tolerance)}
        title = (f"gradcheck · {dtype} · batch {batch_size} · seed {seed} · model of part 3: {model}"
                 + (f", {n_layer} hidden layer(s)" if model == "mlp" else ""))
        super().__init__(title, list(rows or []), None, list(notes or []), sections, settings)

    def header_lines(self) -> list[str]:
        return [self.title, f"rel_err = max|manual − autograd| / max|autograd|; approx = rel_err ≤ {self.tolerance.rel:g} "
                            f"({self.dtype}); exact = bitwise equal"]

    def divider(self, r: Row) -> str | None:
        if r.section == "atomic" and r.name == ATOMIC_ROWS[len(ABOVE_TANH)]:
            return "·· tanh ·· (below: 1 − h² as a fused multiply-add, note 1)"
        return None

    def row_text(self, r: Row) -> str:
        return f"  ({r.note})" if r.note else ""

    def note_lines(self) -> list[str]:
        return [""] + [f"note {i}: {n}" for i, n in enumerate(self.notes, 1)]

    @property
    def summary(self) -> str:
        bad = self.failures
        return (f"all {len(self.rows)} checks pass" if not bad
                else f"{len(bad)} of {len(self.rows)} checks FAILED: {', '.join(f'{r.section}/{r.name}' for r in bad)}")

    def format_table(self) -> str:
        """Aligned table, one row per tensor, per section."""
        return self.format_text()


def compare(
    section: str, name: str, manual: torch.Tensor, reference: torch.Tensor, tol: Tolerance,
    scale: float | None = None, note: str = "",
) -> Row:
    """The verdict on `manual` against autograd's `reference`; `scale` overrides max|reference|."""
    if manual.shape != reference.shape:
        raise AssertionError(f"{section}/{name}: manual gradient has shape {tuple(manual.shape)}, "
                             f"autograd's {tuple(reference.shape)}")
    status, maxdiff, rel_err = judge(manual.detach(), reference.detach(), tol.rel, scale)
    shape = tuple(manual.shape)
    return Row(name, status, shape, shape, maxdiff, rel_err=rel_err, section=section, note=note)


def atomic_check(
    params: dict[str, torch.Tensor], Xb: torch.Tensor, Yb: torch.Tensor, tol: Tolerance
) -> list[Row]:
    """Parts 1 and 2: the chain of atoms (models/mlp_atoms.py), backpropagated by hand step by step and
    compared with the `.grad` autograd retained on every atom; then the fused backward passes."""
    Xb, Yb = Xb.long(), Yb.long()
    batch = {"Xb": Xb, "Yb": Yb, "n": Xb.shape[0], **params}
    F_, auto = MLP_CHAIN.reference(batch)
    with torch.no_grad():
        d = MLP_CHAIN.by_hand({**batch, **F_})
        rows = []
        for name in ATOMIC_ROWS:
            scale = judge_scale(name, auto)  # db1: Σ_batch of terms that cancel exactly, judged against their size
            note = "" if scale is None else "note 2"
            rows.append(compare("atomic", name, d[name], auto[name], tol, scale=scale, note=note))

        # Part 2: the fused expressions the manual engine uses, fed autograd's own upstream gradients
        logits, hprebn = F_["logits"], F_["hprebn"]
        rows.append(compare("fused", "logits (cross_entropy_backward)", cross_entropy_backward(logits, Yb),
                            auto["logits"], tol))
        bn = BatchNorm1d(hprebn.shape[1], eps=BN_EPS).to(hprebn.dtype)
        bn.weight.copy_(params["bngain"])
        bn.bias.copy_(params["bnbias"])
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
