"""Inputs that are not errors: line endings, byte-order mark, spaces, any Unicode, '.' in the
data, duplicates, very long lines, large files."""

from __future__ import annotations

import json
import random
import resource
import sys

import pytest
import torch

import charmlp
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.data import _BOUNDARY_CANDIDATES, Vocab, parse_items, read_items
from charmlp.models import MLPConfig
from conftest import make_items, run_cli


def load(path, block_size: int = 3) -> charmlp.Dataset:
    return charmlp.load_dataset(DataConfig(path=str(path), block_size=block_size))


def test_line_endings_and_bom_give_the_same_items(tmp_path):
    items = make_items(50)
    variants = {
        "lf": "\n".join(items).encode(),
        "crlf": "\r\n".join(items).encode() + b"\r\n",
        "cr": "\r".join(items).encode(),  # classic Mac
        "bom": b"\xef\xbb\xbf" + "\r\n".join(items).encode(),
        "no_final_newline": "\n".join(items).encode(),
    }
    for name, raw in variants.items():
        p = tmp_path / f"{name}.txt"
        p.write_bytes(raw)
        assert read_items(p) == items, name
    assert "\ufeff" not in load(tmp_path / "bom.txt").vocab.itos


def test_surrounding_whitespace_is_stripped_inner_kept():
    text = "  anna \n\tmary ann\t\n\u00a0bo\u3000\n  \n"
    assert parse_items(text) == ["anna", "mary ann", "bo"]


def test_only_newline_characters_split_lines():
    # U+2028 (line separator) and U+0085 are characters of an item, not line breaks
    assert parse_items("a\u2028b\nc\x85d\n") == ["a\u2028b", "c\x85d"]


def test_duplicates_are_kept(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("anna\n" * 30 + "bob\n" * 10)
    ds = load(p)
    assert sum(len(v) for v in ds.items.values()) == 40
    assert sum(v.count("anna") for v in ds.items.values()) == 30


def test_unicode_vocabulary_sized_to_the_data(tmp_path):
    items = ["zoë", "josé", "😀smile", "Ωmega", "naïve", "中文", "ß"] * 5
    p = tmp_path / "u.txt"
    p.write_text("\n".join(items), encoding="utf-8")
    ds = load(p)
    assert set(ds.vocab.itos[1:]) == set("".join(items))
    assert ds.vocab.size == len(set("".join(items))) + 1


@pytest.mark.parametrize("n_chars,dtype", [(300, torch.int16), (40000, torch.int32)])
def test_large_vocabularies_train(tmp_path, n_chars, dtype):
    """More than 256 (or 32768) characters: ids no longer fit uint8 (int16); training still works."""
    rng = random.Random(0)
    chars = [chr(0x20000 + i) for i in range(n_chars)]  # CJK Extension B: no whitespace, no surrogates
    items = ["".join(chars[(i * 7 + j) % n_chars] for j in range(rng.randint(2, 6))) for i in range(n_chars // 4)]
    items += ["".join(chars[i : i + 4]) for i in range(0, n_chars, 4)]  # every character occurs
    p = tmp_path / "cjk.txt"
    p.write_text("\n".join(items), encoding="utf-8")
    ds = load(p)
    assert ds.vocab.size == n_chars + 1 and ds.vocab.index_dtype == dtype
    assert int(ds.X["train"].max()) > 255 and ds.X["train"].dtype == dtype
    if n_chars <= 1000:
        cfg = RunConfig(DataConfig(path=str(p)), MLPConfig(n_hidden=8, n_embd=2), TrainConfig(steps=3, batch_size=8))
        res = charmlp.train(cfg, dataset=ds, progress=False)
        assert all(map(torch.isfinite, map(torch.tensor, res.losses)))
        model = res.model
    else:  # a full evaluation over 40k logits per example is slow: check one step of each engine
        model = charmlp.build_model(MLPConfig(vocab_size=ds.vocab.size, n_hidden=8, n_embd=2), seed=0)
        xb, yb = ds.X["train"][:16], ds.Y["train"][:16]
        la = charmlp.autograd_grads(model, xb, yb)
        ga = [p.grad.clone() for p in model.parameters()]
        lm = charmlp.manual_grads(model, xb, yb)
        assert torch.isfinite(la) and torch.allclose(la, lm)
        assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(ga, model.parameters(), strict=True))
    samples = charmlp.sample(model, ds.vocab, n=5, max_len=8).samples
    assert all(set(s) <= set(ds.vocab.itos[1:]) for s in samples)


def test_boundary_is_a_symbol_absent_from_the_data():
    v = Vocab.from_items(["a.b", "c"])
    assert v.boundary not in "a.bc" and v.boundary == _BOUNDARY_CANDIDATES[1]
    v = Vocab.from_items([_BOUNDARY_CANDIDATES, "x"])  # every candidate is data
    assert v.boundary not in _BOUNDARY_CANDIDATES + "x"
    assert json.loads(v.to_json())["boundary"] == v.boundary


def test_dot_in_the_data_trains_and_samples_items_with_dots(tmp_path):
    """Initials and abbreviations: '.' is an ordinary character, the boundary is another symbol."""
    rng = random.Random(0)
    items = [
        f"{rng.choice('ABCDEFG')}.{rng.choice('HIJKLM')}. {rng.choice(['smith', 'jones', 'lee', 'kim'])}"
        for _ in range(300)
    ]
    p = tmp_path / "initials.txt"
    p.write_text("\n".join(items), encoding="utf-8")
    out = tmp_path / "run"
    t = run_cli("train", "--data", p, "--out", out, "--steps", "300", "--batch-size", "32", "--n-hidden", "32",
                "--no-progress")
    assert t.returncode == 0, t.stderr
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    boundary = vocab["boundary"]
    assert boundary == vocab["itos"][0] and boundary != "." and "." in vocab["itos"]
    s = run_cli("sample", out, "-n", "50", "--json")
    assert s.returncode == 0, s.stderr
    samples = json.loads(s.stdout)["samples"]
    assert len(samples) == 50
    assert not any(boundary in x for x in samples)
    assert sum("." in x for x in samples) >= 25  # the model has learnt the dots
    pre = charmlp.sample_run(out, n=5, prefix="A.")
    assert all(x.startswith("A.") and boundary not in x for x in pre.samples)


def test_very_long_lines(tmp_path):
    items = make_items(30) + ["ab" * 100_000]
    p = tmp_path / "long.txt"
    p.write_text("\n".join(items))
    # --max-item-len 0: no limit, and a window model takes the line whole (by default it is skipped)
    ds = charmlp.load_dataset(DataConfig(path=str(p), block_size=8, max_item_len=0))
    assert sum(len(y) for y in ds.Y.values()) == sum(len(s) + 1 for s in items)
    assert sum(len(y) for y in load(p, block_size=8).Y.values()) == sum(len(s) + 1 for s in items[:-1])


def test_million_line_file_memory(tmp_path):
    """`charmlp data` on 1,000,000 lines stays far below the memory of a laptop (24 GiB)."""
    rng = random.Random(0)
    syll = ["an", "na", "li", "el", "ma", "ri", "o", "ka", "te", "sa", "ju", "bo", "é", "ß"]
    p = tmp_path / "million.txt"
    with p.open("w", encoding="utf-8") as f:
        for _ in range(1_000_000):
            f.write("".join(rng.choice(syll) for _ in range(rng.randint(1, 5))) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = run_cli("data", "--data", p, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert sum(info["items"].values()) == 1_000_000
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib > before and sys.platform.startswith("linux"):  # ru_maxrss is KiB on Linux
        assert peak_kib < 3 * 2**20, f"peak RSS {peak_kib / 2**20:.2f} GiB"
