"""A model's eval forward in NumPy, from a description of its layers: sampling needs no torch.

`describe(model)` turns a model's layer tree into JSON-able data: per layer its class name, the
attributes its eval forward needs (`Layer.eval_attrs`: ε, head count, …), the state-dict keys of
its own parameters and buffers, and its sublayers, recursively. `save_run` writes it into the
weights file's header. `Net(description, arrays)` checks it against the arrays (NumPy, as
`safetensors.numpy` loads them) and runs the eval forward: one small function per layer type.
The description is data: a layer type this module does not know is an error, never code to run.

Incremental decoding: a `cache` (a dict) passed to `Net.__call__` keeps what each layer needs
from earlier positions (attention's keys and values, the recurrent state, the position count),
so a whole-item model fed one new position per call computes only that position.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from .errors import CharmlpError

FORMAT = 1  # of the description
MAX_DEPTH = 32  # nesting of layers in a description
TABLES = ("Embedding", "BigramTable")  # layers whose weight has a row per character
Cache = dict[str, dict[str, Any]]  # layer path → its state from earlier positions


# ----------------------------------------------------------------------------- describing a model


def describe(module: Any, prefix: str = "") -> dict[str, Any]:
    """A layer's description: {"type", "attrs", "tensors": {name: state-dict key}, "children"}.

    Duck-typed on `torch.nn.Module` (no torch import): a `ModuleList` contributes its items in
    order, named "<list>.<i>" as in the state dict."""
    skip = getattr(module, "_non_persistent_buffers_set", set())
    own = [n for n, _ in module.named_parameters(recurse=False)]
    own += [n for n, _ in module.named_buffers(recurse=False) if n not in skip]
    node: dict[str, Any] = {"type": type(module).__name__}
    if attrs := {a: getattr(module, a) for a in getattr(module, "eval_attrs", ())}:
        node["attrs"] = attrs
    if own:
        node["tensors"] = {n: prefix + n for n in own}
    children: dict[str, Any] = {}
    for name, child in module.named_children():
        if type(child).__name__ == "ModuleList":
            children |= {f"{name}.{i}": describe(c, f"{prefix}{name}.{i}.") for i, c in enumerate(child)}
        else:
            children[name] = describe(child, f"{prefix}{name}.")
    if children:
        node["children"] = children
    return node


def describe_model(model: Any) -> dict[str, Any]:
    """A `LanguageModel`'s description: its sizes and its layers (`model.layers`)."""
    cfg = model.cfg
    return {"format": FORMAT, "vocab_size": cfg.vocab_size, "block_size": cfg.block_size,
            "sequence": bool(cfg.sequence), "layers": describe(model.layers, "layers.")}


def table_keys(node: Any, depth: int = 0) -> list[Any]:
    """The state-dict keys of the `TABLES` weights in a description's layers (unchecked: what
    is there), for checks that read tensor shapes only."""
    if depth > MAX_DEPTH or not isinstance(node, dict):
        return []
    tensors, kids = node.get("tensors"), node.get("children")
    own = [tensors.get("weight")] if node.get("type") in TABLES and isinstance(tensors, dict) else []
    return own + [k for kid in (kids.values() if isinstance(kids, dict) else ()) for k in table_keys(kid, depth + 1)]


def model_arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's state dict as NumPy arrays on the CPU, in the dtype they have."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- erf


def _erf_taylor_table(step: float, degree: int, top: float) -> np.ndarray:
    """Taylor coefficients of erf about c = 0, step, 2·step, …, top (rows: highest power first).

    erf⁽ᵏ⁺¹⁾(c) = (−1)ᵏ·2/√π·Hₖ(c)·e^(−c²) (Hermite Hₖ: H₀ = 1, H₁ = 2c, Hₖ₊₁ = 2c·Hₖ − 2k·Hₖ₋₁).
    With |x − c| ≤ 1/64, the terms past degree 9 sum to < 1e-17 and past degree 4 to < 1e-10:
    erf to float64 and to float32 rounding (tests check both against math.erf). Beyond `top`,
    erf = ±1 in float64 (erfc(6) ≈ 2e-17)."""
    c = np.arange(0.0, top + step / 2, step)
    g = 2 / math.sqrt(math.pi) * np.exp(-c * c)
    rows, h_prev, h, fact = [np.array([math.erf(v) for v in c])], np.zeros_like(c), np.ones_like(c), 1.0
    for k in range(degree):
        fact *= k + 1
        rows.append((-1) ** k * g * h / fact)  # erf⁽ᵏ⁺¹⁾(c)/(k+1)!
        h_prev, h = h, 2 * c * h - 2 * k * h_prev
    return np.stack(rows[::-1])


_ERF_STEP, _ERF_TOP = 1 / 32, 6.0
_ERF = _erf_taylor_table(_ERF_STEP, 9, _ERF_TOP)
_ERF_BY_DTYPE = {np.dtype(np.float64): _ERF, np.dtype(np.float32): _ERF[-5:].astype(np.float32)}  # degree 9, 4


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise (NumPy has none), in x's dtype (float32 or float64):
    erf(x) = sign(x)·Σₖ aₖ(c)·(|x| − c)ᵏ about the grid point c nearest |x| (Horner)."""
    table = _ERF_BY_DTYPE[x.dtype]
    a = np.minimum(np.abs(x), _ERF_TOP)  # nan stays nan (in d, so in y) …
    i = np.rint(np.fmin(a, _ERF_TOP) * (1 / _ERF_STEP)).astype(np.intp)  # … but indexes the table
    d = a - i.astype(x.dtype) * _ERF_STEP  # exact: c is a multiple of 2⁻⁵ below 6
    y = table[0].take(i)
    for row in table[1:]:
        y *= d
        y += row.take(i)
    return np.copysign(y, x, out=y)


# ----------------------------------------------------------------------------- layers


@dataclass
class Op:
    """A layer of a checked description: its tensors, attributes and sublayers."""

    type: str
    path: str  # "layers.3", …: the key of its state in a cache
    t: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    kids: dict[str, Op] = field(default_factory=dict)


def _run(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return LAYERS[op.type].forward(op, x, cache)


def _state(op: Op, cache: Cache | None) -> dict[str, Any]:
    """This layer's state from earlier positions ({} without a cache: nothing is kept)."""
    return {} if cache is None else cache.setdefault(op.path, {})


def _sequential(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    for kid in op.kids.values():
        x = _run(kid, x, cache)
    return x


def _embedding(op: Op, ids: np.ndarray, cache: Cache | None) -> np.ndarray:
    return op.t["weight"][ids]  # out[…] = C[ids[…]]


def _bigram(op: Op, ids: np.ndarray, cache: Cache | None) -> np.ndarray:
    return op.t["weight"][ids[..., -1]]  # logits = W[last id]


def _position(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    st, T = _state(op, cache), x.shape[-2]
    t0 = st.get("t", 0)  # positions already seen
    if t0 + T > len(op.t["weight"]):
        raise ValueError(f"{t0 + T} positions, more than the {len(op.t['weight'])} this model has")
    st["t"] = t0 + T
    return x + op.t["weight"][t0 : t0 + T]  # y = x + P[t0 : t0 + T]


def _linear(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    y = x @ op.t["weight"]  # y = x·W + b
    if "bias" in op.t:
        y += op.t["bias"]
    return y


def _batchnorm(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    t = op.t  # eval: y = γ·(x − μ)/√(σ² + ε) + β with the running μ, σ² (in place on one fresh array)
    y = x - t["running_mean"]
    y *= 1 / np.sqrt(t["running_var"] + op.attrs["eps"])
    y *= t["weight"]
    y += t["bias"]
    return y


def _layernorm(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)  # per row: y = γ·(x − μ)/√(σ² + ε) + β, σ² = mean((x − μ)²)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc * (1 / np.sqrt(var + op.attrs["eps"])) * op.t["weight"] + op.t["bias"]


def _identity(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return x


def _tanh(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return np.tanh(x)


def _gelu(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return x * 0.5 * (1.0 + erf(x * (1 / math.sqrt(2))))  # y = x·Φ(x) = x·½(1 + erf(x/√2))


def _flatten(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return x.reshape(len(x), -1)  # (B, T, E) → (B, T·E)


def _flatten_consecutive(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    B, T, C = x.shape
    n = op.attrs["n"]
    if T % n:
        raise ValueError(f"FlattenConsecutive({n}) over {T} positions")
    x = x.reshape(B, T // n, C * n)  # (B, T, C) → (B, T/n, n·C), a single position dropped
    return x[:, 0] if x.shape[1] == 1 else x


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))  # softmax(x) = eˣ⁻ᵐᵃˣ / Σ eˣ⁻ᵐᵃˣ
    return e / e.sum(-1, keepdims=True)


def _attention(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    B, T, C = x.shape
    H = op.attrs["n_head"]
    q, k, v = _run(op.kids["qkv"], x, cache).reshape(B, T, 3, H, C // H).transpose(2, 0, 3, 1, 4)  # (B, H, T, D)
    st = _state(op, cache)
    if "k" in st:  # the keys and values of earlier positions come first
        k, v = np.concatenate([st["k"], k], 2), np.concatenate([st["v"], v], 2)
    st["k"], st["v"] = k, v
    t0 = k.shape[2] - T
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1 / math.sqrt(C // H))  # q·kᵀ/√D
    future = np.arange(k.shape[2]) > t0 + np.arange(T)[:, None]  # query t0 + i sees keys 0 … t0 + i
    scores[..., future] = -np.inf
    y = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)  # heads merged
    return _run(op.kids["proj"], y, cache)


def _mlp(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return _run(op.kids["proj"], _run(op.kids["act"], _run(op.kids["fc"], x, cache), cache), cache)


def _block(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    kids = op.kids  # x → x + attn(ln1(x)) → x + mlp(ln2(x))
    x = x + _run(kids["attn"], _run(kids["ln1"], x, cache), cache)
    return x + _run(kids["mlp"], _run(kids["ln2"], x, cache), cache)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # σ(x) = ½(1 + tanh(x/2)): no overflow


def _rnn_step(t: dict[str, np.ndarray], xp: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.tanh(xp + h @ t["Wh"])  # h' = tanh(x·Wx + b + h·Wh)


def _gru_step(t: dict[str, np.ndarray], xp: np.ndarray, h: np.ndarray) -> np.ndarray:
    H = h.shape[1]
    zr = _sigmoid(xp[:, : 2 * H] + h @ t["Wh"])  # z, r = σ(x·Wx + b + h·Wh), side by side
    z, r = zr[:, :H], zr[:, H:]
    c = np.tanh(xp[:, 2 * H :] + (r * h) @ t["Wc"])  # c = tanh(x·Wx_c + b_c + (r⊙h)·Wc)
    return h + z * (c - h)  # h' = (1 − z)⊙h + z⊙c


CELL_STEPS: dict[str, Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray], np.ndarray]] = {
    "RNNCell": _rnn_step, "GRUCell": _gru_step,
}


def _recurrent(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    cell = op.kids["cell"]
    step = CELL_STEPS[cell.type]
    xp = x @ cell.t["Wx"] + cell.t["b"]  # the input half of every step's pre-activations, at once
    st = _state(op, cache)
    h = st.get("h", np.broadcast_to(op.t["h0"], (len(x), len(op.t["h0"]))))  # h₋₁ = h0
    hs = []
    for t in range(x.shape[1]):
        h = step(cell.t, xp[:, t], h)
        hs.append(h)
    st["h"] = h
    return np.stack(hs, 1)


def _language_model(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return _run(op.kids["layers"], x, cache)  # an ensemble's member: a whole model


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)  # log softmax(x) = x − m − log Σ eˣ⁻ᵐ
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _ensemble(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    logp = np.stack([_log_softmax(_run(kid, x, cache)) for kid in op.kids.values()])  # (K, …, V)
    m = logp.max(0)  # log((1/K) Σ_k softmax(z_k)) = m + log Σ_k e^(ls_k − m) − log K
    return m + np.log(np.exp(logp - m).sum(0)) - math.log(len(logp))


def _cell(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    raise ValueError(f"a {op.type} runs only as the cell of a Recurrent")


# ----------------------------------------------------------------------------- layer kinds, checks


@dataclass(frozen=True)
class Kind:
    """What a layer type holds: tensors by rank (`optional` ones may be absent), attributes,
    named sublayers (None: any number, run in order)."""

    forward: Callable[[Op, np.ndarray, Cache | None], np.ndarray]
    tensors: dict[str, int] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    kids: tuple[str, ...] | None = ()
    optional_kids: tuple[str, ...] = ()


_NORM = {"weight": 1, "bias": 1}
LAYERS: dict[str, Kind] = {
    "Sequential": Kind(_sequential, kids=None),
    "Embedding": Kind(_embedding, {"weight": 2}),
    "BigramTable": Kind(_bigram, {"weight": 2}),
    "PositionEmbedding": Kind(_position, {"weight": 2}),
    "Linear": Kind(_linear, {"weight": 2, "bias": 1}, optional=("bias",)),
    "BatchNorm1d": Kind(_batchnorm, {**_NORM, "running_mean": 1, "running_var": 1}, attrs=("eps",)),
    "LayerNorm": Kind(_layernorm, _NORM, attrs=("eps",)),
    "Tanh": Kind(_tanh),
    "GELU": Kind(_gelu),
    "Flatten": Kind(_flatten),
    "FlattenConsecutive": Kind(_flatten_consecutive, attrs=("n",)),
    "CausalSelfAttention": Kind(_attention, attrs=("n_head",), kids=("qkv", "proj")),
    "MLP": Kind(_mlp, kids=("fc", "act", "proj")),
    "Block": Kind(_block, kids=("ln1", "attn", "ln2", "mlp"), optional_kids=("drop1", "drop2")),
    "Dropout": Kind(_identity),  # training only
    "Ensemble": Kind(_ensemble, kids=None),
    "LanguageModel": Kind(_language_model, kids=("layers",)),
    "Recurrent": Kind(_recurrent, {"h0": 1}, kids=("cell",)),
    "RNNCell": Kind(_cell, {"Wx": 2, "b": 1, "Wh": 2}),
    "GRUCell": Kind(_cell, {"Wx": 2, "b": 1, "Wh": 2, "Wc": 2}),
}


def _shape_checks(op: Op) -> str | None:
    """What is wrong with the shapes of one layer's tensors and attributes (None: nothing)."""
    t, a = op.t, op.attrs
    if op.type == "Linear" and "bias" in t and t["bias"].shape != t["weight"].shape[1:]:
        return "its bias does not match its weight"
    if op.type in ("BatchNorm1d", "LayerNorm") and len({v.shape for v in t.values()}) != 1:
        return "its tensors differ in length"
    if op.type in ("BatchNorm1d", "LayerNorm") and not (isinstance(a["eps"], (int, float)) and 0 < a["eps"] <= 1):
        return "its eps is not a number in (0, 1]"
    for name in ("n", "n_head"):
        if name in a and not (type(a[name]) is int and a[name] >= 1):
            return f"its {name} is not a positive integer"
    if op.type == "CausalSelfAttention":
        C = op.kids["qkv"].t.get("weight", np.empty((0, 0))).shape[0]
        if C % a["n_head"]:
            return f"its width {C} is not a multiple of its {a['n_head']} heads"
    if op.type == "Recurrent":
        cell, H = op.kids["cell"], len(t["h0"])
        if cell.type not in CELL_STEPS:
            return f"its cell is a {cell.type}"
        gates = 3 if cell.type == "GRUCell" else 1
        want = {"Wx": (cell.t["Wx"].shape[0], gates * H), "b": (gates * H,), "Wh": (H, (gates - 1 or 1) * H),
                "Wc": (H, H)}
        if any(v.shape != want[k] for k, v in cell.t.items()):
            return "its cell's weights do not match its hidden size"
    return None


class Net:
    """A described model over NumPy arrays: ids (B, T) → logits, in eval mode.

    Window models: ids (B, block_size) → (B, V). Whole-item models (`sequence`): ids (B, T) →
    (B, T, V), T ≤ block_size; with a `cache`, the ids are the positions after those the cache
    has already seen."""

    def __init__(self, description: Any, arrays: dict[str, np.ndarray], where: str = "the model") -> None:
        self.where = where
        d = description
        if not (isinstance(d, dict) and d.get("format") == FORMAT):
            self._fail("has a description of its layers in another format; it was written by another charmlp version")
        sizes = [d.get(k) for k in ("vocab_size", "block_size")]
        if not all(type(s) is int and s >= 1 for s in sizes) or not isinstance(d.get("sequence"), bool):
            self._fail("has a damaged description of its layers")
        self.vocab_size, self.block_size = sizes
        self.sequence: bool = d["sequence"]
        # a layer's extra state (dropout's seed and count) is training state: not the forward's
        arrays = {k: v for k, v in arrays.items() if not k.endswith("._extra_state")}
        bad = sorted({str(v.dtype) for v in arrays.values()} - {"float32", "float64"})
        if bad:
            self._fail(f"holds tensors of dtype {', '.join(bad)}; a model's are float32 or float64")
        self.used: set[str] = set()
        self.root = self._compile(d.get("layers"), arrays, "layers", 0)
        if extra := sorted(set(arrays) - self.used):
            self._fail(f"holds tensors its description does not use ({', '.join(extra[:3])})")
        tables = [op.t["weight"] for op in _walk(self.root) if op.type in TABLES]
        if any(len(w) != self.vocab_size for w in tables):
            self._fail(f"has an embedding table whose rows are not its {self.vocab_size} characters")
        self.dtype = np.result_type(*arrays.values()) if arrays else np.dtype(np.float32)
        self._check_forward()
        _fold_batchnorms(self.root)

    @classmethod
    def from_model(cls, model: Any) -> Net:
        """The NumPy forward of an in-memory `LanguageModel` (weights copied to the CPU)."""
        return cls(describe_model(model), model_arrays(model))

    def _fail(self, msg: str) -> NoReturn:
        raise CharmlpError(f"{self.where} {msg}")

    def _compile(self, node: Any, arrays: dict[str, np.ndarray], path: str, depth: int) -> Op:
        if depth > MAX_DEPTH or not isinstance(node, dict) or not isinstance(node.get("type"), str):
            self._fail("has a damaged description of its layers")
        kind = LAYERS.get(node["type"])
        if kind is None:
            self._fail(f"describes a layer of unknown type {node['type'][:40]!r} (at {path}); "
                       "it was written by another charmlp version")
        tensors, attrs, kids = (node.get(k, {}) for k in ("tensors", "attrs", "children"))
        if not all(isinstance(v, dict) for v in (tensors, attrs, kids)) or set(tensors) - set(kind.tensors) \
                or set(kind.tensors) - set(tensors) - set(kind.optional) or set(attrs) != set(kind.attrs) \
                or (kind.kids is not None and not set(kind.kids) <= set(kids) <= {*kind.kids, *kind.optional_kids}):
            self._fail(f"has a damaged description of its {node['type']} layer at {path}")
        op = Op(node["type"], path, attrs=dict(attrs))
        for name, key in tensors.items():
            if not isinstance(key, str) or key not in arrays:
                self._fail(f"has no tensor {str(key)[:80]!r}, which its {node['type']} layer at {path} needs; "
                           "the file is damaged")
            if arrays[key].ndim != kind.tensors[name]:
                self._fail(f"has a {arrays[key].ndim}-d {key}, where its {node['type']} layer needs "
                           f"{kind.tensors[name]}-d; the file is damaged")
            op.t[name] = arrays[key]
            self.used.add(key)
        op.kids = {k: self._compile(v, arrays, f"{path}.{k}", depth + 1) for k, v in kids.items()}
        if (why := _shape_checks(op)) is not None:
            self._fail(f"has a {node['type']} layer at {path} whose shapes do not fit: {why}")
        return op

    def _check_forward(self) -> None:
        """Run the boundary context through the model: every shape must fit, logits come out (…, V)."""
        T = self.block_size
        try:
            out = self(np.zeros((1, T), np.int64))
        except (ValueError, IndexError, KeyError, TypeError) as e:
            self._fail(f"describes layers whose shapes do not fit together ({' '.join(str(e).split())[:200]}); the file is damaged")
        want = (1, T, self.vocab_size) if self.sequence else (1, self.vocab_size)
        if out.shape != want:
            self._fail(f"describes a model with outputs of shape {out.shape[1:]}, not {want[1:]}")

    def __call__(self, ids: np.ndarray, cache: Cache | None = None) -> np.ndarray:
        return _run(self.root, np.asarray(ids, np.int64), cache)


def _fold_batchnorms(op: Op) -> None:
    """Fold each BatchNorm1d into the Linear before it (in eval mode BatchNorm is affine):
    γ·(x·W + b − μ)·r + β = x·(W·a) + ((b − μ)·a + β), a = γ·r, r = 1/√(σ² + ε). The same function
    in one matmul; new arrays, the model's are not touched."""
    for kid in op.kids.values():
        _fold_batchnorms(kid)
    if op.type != "Sequential":
        return
    kids, folded = list(op.kids.items()), {}
    for i, (name, kid) in enumerate(kids):
        prev = kids[i - 1][1] if i else None
        if kid.type == "BatchNorm1d" and prev is not None and prev.type == "Linear":
            t, W = kid.t, prev.t["weight"]
            a = t["weight"] * (1 / np.sqrt(t["running_var"] + kid.attrs["eps"]))
            b = prev.t.get("bias", np.zeros(W.shape[1], W.dtype))
            prev.t = {"weight": W * a, "bias": (b - t["running_mean"]) * a + t["bias"]}
        else:
            folded[name] = kid
    op.kids = folded


def _walk(op: Op) -> list[Op]:
    return [op, *(o for kid in op.kids.values() for o in _walk(kid))]


def filter_cache(cache: Cache, keep: np.ndarray) -> None:
    """Keep only the rows `keep` (a boolean mask over the batch) of every state in `cache`."""
    for st in cache.values():
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                st[k] = v[keep]
