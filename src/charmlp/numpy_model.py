"""A model's eval forward in NumPy, from a description of its layers: sampling needs no torch.

`describe(model)` turns a model's layer tree into JSON-able data: per layer its class name, the
attributes its eval forward needs (`Layer.eval_attrs`: ε, head count, …), the state-dict keys of
its own parameters and buffers, and its sublayers, recursively. `save_run` writes it into the
weights file's header. `Net(description, arrays)` checks it against the arrays (NumPy, as
`safetensors.numpy` loads them) and runs the eval forward: each layer type's is a small function
beside the layer, in `nn/<file>_numpy.py` (gathered by `nn.numpy_kinds`, torch-free); this module
holds what every model shares: describing, checking, running, caches and BatchNorm folding.
The description is data: a layer type no kind names is an error, never code to run.

Incremental decoding: a `cache` (a dict) passed to `Net.__call__` keeps what each layer needs
from earlier positions (attention's keys and values, the recurrent state, the position count),
so a whole-item model fed one new position per call computes only that position.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from .errors import CharmlpError
from .nn import numpy_kinds
from .nn.activations_numpy import erf as erf  # GELU's, and still importable from here
from .nn.module_numpy import Cache, Kind, Op, run

FORMAT = 1  # of the description
MAX_DEPTH = 32  # nesting of layers in a description


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


# ----------------------------------------------------------------------------- layer kinds, checks


def _language_model(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return run(op.kids["layers"], x, cache)  # an ensemble's member: a whole model (`describe_model`'s wrapper)


LAYERS: dict[str, Kind] = {**numpy_kinds(), "LanguageModel": Kind(_language_model, kids=("layers",))}
TABLES = tuple(name for name, kind in LAYERS.items() if kind.table)  # layers whose weight has a row per character


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
        tables = [op.t["weight"] for op in _walk(self.root) if op.kind.table]
        if any(len(w) != self.vocab_size for w in tables):
            self._fail(f"has an embedding table whose rows are not its {self.vocab_size} characters")
        self.dtype = np.result_type(*arrays.values()) if arrays else np.dtype(np.float32)
        self._check_forward()
        _fold_batchnorms(self.root)

    @classmethod
    def from_model(cls, model: Any) -> Net:
        """The NumPy forward of an in-memory `LanguageModel` (weights copied to the CPU)."""
        return cls(describe_model(model), model_arrays(model))

    @classmethod
    def of(cls, model: Any) -> Net:
        """`model` itself if it is a Net, else the NumPy forward of the `LanguageModel` (`from_model`)."""
        return model if isinstance(model, Net) else cls.from_model(model)

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
        op = Op(node["type"], path, kind, attrs=dict(attrs))
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
        if kind.check is not None and (why := kind.check(op)) is not None:
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
        return run(self.root, np.asarray(ids, np.int64), cache)


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
