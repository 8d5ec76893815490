"""The bigram model: its count fit is the smoothed maximum-likelihood table, gradient training
approaches it, and every command runs it."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch

from charmlp.cli import main
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.data import load_dataset
from charmlp.errors import CharmlpError
from charmlp.evaluate import split_loss
from charmlp.models import BigramConfig, build_model, num_params
from charmlp.models.bigram import count_table
from charmlp.train import train
from conftest import make_items


def pair_counts(items: list[str], itos: list[str]) -> torch.Tensor:
    """N[i, j]: how often character j follows i, the boundary (id 0) at both ends of every item."""
    stoi = {c: i for i, c in enumerate(itos)}
    c = Counter()
    for w in items:
        ids = [0] + [stoi[ch] for ch in w] + [0]
        c.update(zip(ids, ids[1:]))
    N = torch.zeros(len(itos), len(itos), dtype=torch.float64)
    for (i, j), n in c.items():
        N[i, j] = n
    return N


@pytest.fixture
def tiny(tiny_data):
    return load_dataset(DataConfig(path=str(tiny_data), block_size=1))


@pytest.mark.parametrize("alpha", [1.0, 0.25, 1e-3])
def test_count_fit_is_the_smoothed_maximum_likelihood_table(tiny, alpha):
    """W = log((N + α)/rowsum(N + α)), with N counted here from the training items themselves."""
    result = train(RunConfig(DataConfig(block_size=1), BigramConfig(fit="counts", smoothing=alpha), TrainConfig(steps=50)),
                   dataset=tiny, progress=False)
    N = pair_counts(tiny.items["train"], tiny.vocab.itos)
    expected = ((N + alpha) / (N + alpha).sum(1, keepdim=True)).log()
    assert torch.allclose(count_table(tiny.X["train"], tiny.Y["train"], tiny.vocab.size, alpha), expected, rtol=0, atol=1e-12)
    assert torch.equal(result.model.layers[0].weight, expected.float())
    assert result.summary["steps"] == 0 and result.losses == [] and result.config.train.steps == 0
    # it is the maximum-likelihood table: the train loss is the mean of −W[prev, next] over the pairs
    nll = -(N * expected).sum() / N.sum()
    assert abs(result.summary["train_loss"] - nll.item()) < 1e-5


def test_gradient_trained_table_approaches_the_count_fit(tiny):
    """The count fit with α → 0 minimises the train loss; gradient steps get within 0.005 of it."""
    counts = train(RunConfig(DataConfig(block_size=1), BigramConfig(fit="counts", smoothing=1e-6), TrainConfig()),
                   dataset=tiny, progress=False)
    tc = TrainConfig(steps=400, batch_size=len(tiny.Y["train"]), optimizer="adamw", lr=0.3, lr_final=0.01, schedule="cosine",
                     engine="manual")
    grad = train(RunConfig(DataConfig(block_size=1), BigramConfig(), tc), dataset=tiny, progress=False)
    best, reached = counts.summary["train_loss"], grad.summary["train_loss"]
    assert best <= reached < best + 0.005, (best, reached)
    assert grad.losses[0] == pytest.approx(math.log(tiny.vocab.size), abs=1e-6)  # W = 0: uniform


def test_table_reads_only_the_last_character_of_a_longer_window(tiny_data):
    ds1 = load_dataset(DataConfig(path=str(tiny_data), block_size=1))
    ds3 = load_dataset(DataConfig(path=str(tiny_data), block_size=3))
    model = build_model(BigramConfig(vocab_size=ds1.vocab.size), seed=0)
    with torch.no_grad():
        model.layers[0].weight.normal_(generator=torch.Generator().manual_seed(1))
    assert split_loss(model, ds1.X["val"], ds1.Y["val"]) == pytest.approx(split_loss(model, ds3.X["val"], ds3.Y["val"]), abs=1e-6)
    assert num_params(model) == ds1.vocab.size**2


def test_bad_fit_options_are_user_errors():
    with pytest.raises(CharmlpError, match="--smoothing"):
        build_model(BigramConfig(fit="counts", smoothing=0.0))
    with pytest.raises(CharmlpError, match="unknown fit"):
        build_model(BigramConfig(fit="magic"))


def cli(capsys, *args) -> tuple[int, str, str]:
    """`charmlp ARGS` in this process (a fresh interpreter per call costs seconds on a busy machine)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_count_fit_sample_eval_and_gradcheck(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--model", "bigram", "--fit", "counts", "--smoothing", "0.5", "--data", tiny_data,
                       "--out", out, "--no-progress")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == {"kind": "bigram", "vocab_size": cfg["model"]["vocab_size"], "block_size": 1, "fit": "counts",
                            "smoothing": 0.5}
    a, b = (cli(capsys, "sample", out, "-n", "8", "--seed", "3") for _ in range(2))
    assert a[0] == 0 and a[1] == b[1] and len(a[1].splitlines()) >= 8
    code, text, _ = cli(capsys, "eval", out)
    assert code == 0 and "test" in text
    batch = random.Random(7).randint(2, 50)
    code, text, err = cli(capsys, "gradcheck", "--model", "bigram", "--dtype", "float64", "--batch-size", batch, "--data",
                          tiny_data, "--json")
    assert code == 0, err
    rows = json.loads(text)["rows"]
    assert {r["name"] for r in rows} == {"loss → logits", "[0] BigramTable.weight"}
    assert max(r["rel_err"] for r in rows) <= 1e-10


def test_cli_fit_errors(tiny_data, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--model", "bigram", "--fit", "counts", "--smoothing", "0", "--data", tiny_data,
                       "--out", tmp_path / "r")
    assert code == 2 and err.startswith("error:") and "--smoothing" in err
    code, _, err = cli(capsys, "train", "--model", "mlp", "--fit", "counts", "--data", tiny_data, "--out", tmp_path / "r")
    assert code == 2 and "does not apply" in err


def test_count_fit_on_generated_items_of_another_alphabet(tmp_path):
    """Nothing name-specific: any word list gets its own table."""
    p = tmp_path / "w.txt"
    p.write_text("\n".join(w.upper() for w in make_items(200, seed=5)) + "\n", encoding="utf-8")
    ds = load_dataset(DataConfig(path=str(p), block_size=1))
    r = train(RunConfig(DataConfig(block_size=1), BigramConfig(fit="counts"), TrainConfig()), dataset=ds, progress=False)
    assert r.model.layers[0].weight.shape == (ds.vocab.size, ds.vocab.size)
    assert r.summary["val_loss"] < math.log(ds.vocab.size)
