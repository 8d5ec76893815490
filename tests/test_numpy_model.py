"""The NumPy eval forward against the torch models: every kind, float32 and float64, random
weights and BatchNorm statistics; incremental decoding; erf; descriptions that are damaged."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from charmlp.errors import CharmlpError
from charmlp.models import build_model, model_config
from charmlp.numpy_model import Net, describe_model, erf, filter_cache, model_arrays

V = 11
CONFIGS = {
    "mlp": {"n_embd": 5, "n_hidden": 16, "n_layer": 2},
    "mlp-nobn": {"n_embd": 5, "n_hidden": 16, "batchnorm": False},
    "wavenet": {"block_size": 8, "n_embd": 4, "n_hidden": 12},
    "bigram": {},
    "rnn": {"block_size": 7, "n_embd": 5, "n_hidden": 9},
    "gru": {"block_size": 7, "n_embd": 5, "n_hidden": 9},
    "transformer": {"block_size": 7, "n_embd": 8, "n_head": 2, "n_layer": 2},
    "gru-dropout": {"block_size": 7, "n_embd": 5, "n_hidden": 9, "dropout": 0.3},  # eval: no dropout
    "transformer-dropout": {"block_size": 7, "n_embd": 8, "n_head": 2, "n_layer": 2, "dropout": 0.2},
}


def random_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """A model with random weights everywhere (biases, γ, β, h0 too) and non-trivial BatchNorm statistics."""
    m = build_model(model_config(name.split("-")[0], vocab_size=V, **CONFIGS[name]), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for k, b in m.named_buffers():
            b.copy_(torch.randn(b.shape, generator=g) if "mean" in k else torch.rand(b.shape, generator=g) + 0.5)
    return m.to(dtype).eval()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_forward_equals_the_torch_eval_forward(name, dtype):
    m = random_model(name, dtype)
    net = Net.from_model(m)
    ids = torch.randint(0, V, (9, m.cfg.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = m(ids).numpy()
    got = net(ids.numpy())
    assert got.dtype == want.dtype and got.shape == want.shape
    if dtype == torch.float32:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["rnn", "gru", "transformer"])
def test_incremental_decoding_equals_the_whole_sequence(name):
    """Fed one position at a time with a cache (rows dropping out between steps), the logits are
    those of the whole sequence at once."""
    m = random_model(name, torch.float64)
    net = Net.from_model(m)
    ids = np.random.default_rng(0).integers(0, V, (6, m.cfg.block_size))
    full = net(ids)
    cache: dict = {}
    rows = np.arange(6)
    for t in range(ids.shape[1]):
        if t == 3:  # rows 1 and 4 end
            keep = ~np.isin(rows, [1, 4])
            rows = rows[keep]
            filter_cache(cache, keep)
        step = net(ids[rows, t : t + 1], cache)
        np.testing.assert_allclose(step[:, 0], full[rows, t], rtol=0, atol=1e-12)


def tensor_keys(node: dict) -> list[str]:
    return [*node.get("tensors", {}).values(), *(k for c in node.get("children", {}).values() for k in tensor_keys(c))]


def test_description_covers_the_state_dict_and_survives_json():
    for name in CONFIGS:
        m = random_model(name)
        desc = json.loads(json.dumps(describe_model(m)))
        state = [k for k in m.state_dict() if not k.endswith("._extra_state")]  # dropout's: training state
        assert sorted(tensor_keys(desc["layers"])) == sorted(state), name
        assert desc["sequence"] == m.cfg.sequence and desc["vocab_size"] == V
        np.testing.assert_array_equal(Net(desc, model_arrays(m))(np.zeros((2, m.cfg.block_size), np.int64)),
                                      Net.from_model(m)(np.zeros((2, m.cfg.block_size), np.int64)))


def test_layer_attributes_are_in_the_description():
    desc = describe_model(random_model("transformer"))
    block = desc["layers"]["children"]["layers.2"]
    assert block["type"] == "Block"
    assert block["children"]["attn"]["attrs"] == {"n_head": 2}
    assert block["children"]["ln1"]["attrs"] == {"eps": 1e-5}
    rnn = describe_model(random_model("gru"))["layers"]["children"]["layers.1"]
    assert rnn["type"] == "Recurrent" and rnn["children"]["cell"]["type"] == "GRUCell"
    wn = describe_model(random_model("wavenet"))["layers"]["children"]
    assert [c["attrs"]["n"] for c in wn.values() if c["type"] == "FlattenConsecutive"] == [2, 2, 2]


def test_erf_to_float64_and_float32_rounding():
    x = np.concatenate([np.linspace(-7, 7, 140_001), np.random.default_rng(0).standard_normal(20_000) * 2,
                        [0.0, -0.0, 1e-300, -1e-8, 5.99, 6.0, 30.0, -np.inf, np.inf]])
    want = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - want).max() <= 2.3e-16
    x32 = x.astype(np.float32)
    want32 = np.array([math.erf(v) for v in x32.astype(np.float64)])
    got32 = erf(x32)
    assert got32.dtype == np.float32
    assert np.abs(got32 - want32).max() <= 6e-8  # one float32 ulp at 1
    small = np.abs(x) < 1e-3  # relative accuracy near 0 (erf(x) ≈ 2x/√π)
    np.testing.assert_allclose(erf(x[small]), want[small], rtol=1e-15, atol=0)
    assert np.isnan(erf(np.array([np.nan])))[0]


# ----------------------------------------------------------------------------- damaged descriptions


def broken(name: str, change) -> tuple[dict, dict]:
    m = random_model(name)
    desc, arrays = copy.deepcopy(describe_model(m)), model_arrays(m)
    change(desc, arrays)
    return desc, arrays


def one_line_error(desc: dict, arrays: dict, match: str) -> None:
    with pytest.raises(CharmlpError, match=match) as e:
        Net(desc, arrays, where="model.safetensors")
    assert "\n" not in str(e.value) and str(e.value).startswith("model.safetensors ")


def test_unknown_layer_type_is_an_error_not_code():
    def change(desc, arrays):
        desc["layers"]["children"]["layers.2"]["type"] = "__import__('os').system"
    one_line_error(*broken("mlp", change), "unknown type")


@pytest.mark.parametrize("change, match", [
    (lambda d, a: a.pop("layers.layers.0.weight"), "has no tensor 'layers.layers.0.weight'"),
    (lambda d, a: a.update({"layers.layers.2.weight": a["layers.layers.2.weight"][0]}), "1-d"),
    (lambda d, a: a.update({"extra": np.zeros(3, np.float32)}), "does not use"),
    (lambda d, a: a.update({"layers.layers.2.weight": a["layers.layers.2.weight"][:-1]}), "do not fit together"),
    (lambda d, a: a.update({"layers.layers.0.weight": a["layers.layers.0.weight"][:-1]}), "embedding table"),
    (lambda d, a: a.update({"layers.layers.3.bias": a["layers.layers.3.bias"][:-1]}), "differ in length"),
    (lambda d, a: a.update({"layers.layers.2.weight": a["layers.layers.2.weight"].astype(np.int32)}), "dtype int32"),
    (lambda d, a: d["layers"]["children"]["layers.3"].update(attrs={"eps": "1e-5"}), "eps"),
    (lambda d, a: d["layers"]["children"]["layers.3"].update(attrs={}), "damaged description"),
    (lambda d, a: d["layers"]["children"]["layers.2"]["tensors"].update(weight=7), "has no tensor '7'"),
    (lambda d, a: d.update(layers=[]), "damaged description"),
    (lambda d, a: d.update(format=2), "another format"),
    (lambda d, a: d.update(vocab_size=12), "embedding table"),
    (lambda d, a: d.update(sequence=True), "outputs of shape"),
])
def test_damaged_descriptions_are_one_line_errors(change, match):
    one_line_error(*broken("mlp", change), match)


def test_damaged_transformer_and_recurrent_descriptions():
    def heads(d, a):
        d["layers"]["children"]["layers.2"]["children"]["attn"]["attrs"]["n_head"] = 3
    one_line_error(*broken("transformer", heads), "multiple of its 3 heads")

    def cell(d, a):
        d["layers"]["children"]["layers.1"]["children"]["cell"]["type"] = "RNNCell"
        del d["layers"]["children"]["layers.1"]["children"]["cell"]["tensors"]["Wc"]
        a.pop("layers.layers.1.cell.Wc")
    one_line_error(*broken("gru", cell), "hidden size")

    def loose_cell(d, a):
        d["layers"]["children"]["layers.1"] = d["layers"]["children"]["layers.1"]["children"]["cell"]
        a.pop("layers.layers.1.h0")
    one_line_error(*broken("gru", loose_cell), "cell of a Recurrent")

    def deep(d, a):
        node = d["layers"]
        for _ in range(40):
            node["children"] = {"x": {"type": "Sequential"}}
            node = node["children"]["x"]
    one_line_error(*broken("rnn", deep), "damaged description")


def test_every_layer_type_has_its_numpy_forward_beside_it():
    """Each layer class of charmlp.nn has a NumPy eval forward in its file's `<file>_numpy.py`,
    gathered by `nn.numpy_kinds` (a new layer file left out of `nn._NUMPY` fails here)."""
    from charmlp import nn

    layers = {name for name in nn.__all__ if isinstance(cls := getattr(nn, name), type) and issubclass(cls, nn.Layer)}
    assert layers - {"Layer", "Cell"} == set(nn.numpy_kinds())
