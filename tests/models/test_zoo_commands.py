"""bigram, rnn and gru (alone and as an ensemble) through the commands: gradcheck at random batch sizes and context
lengths, manual vs autograd training losses, seeded samples, checkpoint round trip, resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from charmlp.checkpoint import load_run
from charmlp.cli import main
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.evaluate import evaluate_run
from charmlp.models import BigramConfig, GRUConfig, RNNConfig
from charmlp.sampling import sample_run
from charmlp.train import resume, train

SMALL = {  # small enough for a 2-core test run, big enough to learn something
    "bigram": BigramConfig(),
    "rnn": RNNConfig(n_embd=8, n_hidden=16),
    "gru": GRUConfig(n_embd=8, n_hidden=16),
    "gru-ensemble": GRUConfig(n_embd=8, n_hidden=16, members=2),  # each member trains on half of every batch
}
SMALL_FLAGS = {"bigram": [], "rnn": ["--n-embd", "8", "--n-hidden", "16"], "gru": ["--n-embd", "8", "--n-hidden", "16"]}


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", ["bigram", "rnn", "gru"])
def test_gradcheck_float64_passes_at_random_batch_and_context(kind, tiny_data, capsys):
    rng = random.Random(f"gradcheck-{kind}")
    batch = rng.randint(2, 40)
    longest = max(map(len, tiny_data.read_text().split()))
    block = rng.randint(longest + 1, longest + 6) if kind != "bigram" else rng.randint(1, 5)
    code, out, err = cli(capsys, "gradcheck", "--model", kind, *SMALL_FLAGS[kind], "--dtype", "float64", "--batch-size", batch,
                         "--block-size", block, "--seed", rng.randint(0, 10**6), "--data", tiny_data, "--json")
    assert code == 0, (err, out)
    report = json.loads(out)
    names = [r["name"] for r in report["rows"]]
    if kind != "bigram":
        cell = ["Wx", "b", "Wh"] + (["Wc"] if kind == "gru" else [])
        assert {f"[1] Recurrent.cell.{p}" for p in cell} | {"[1] Recurrent.h0", "[1] Recurrent input"} <= set(names)
    assert report["ok"] and max(r["rel_err"] for r in report["rows"]) <= 1e-10


@pytest.mark.parametrize("kind", ["bigram", "rnn", "gru", "gru-ensemble"])
def test_manual_and_autograd_training_losses_agree_over_200_steps(kind, tiny_data):
    losses = {}
    for engine in ("autograd", "manual"):
        tc = TrainConfig(steps=200, batch_size=16, optimizer="adamw", lr=0.01, lr_final=0.001, schedule="cosine",
                         engine=engine, eval_every=0)
        r = train(RunConfig(DataConfig(path=str(tiny_data), block_size=SMALL[kind].block_size), SMALL[kind], tc), progress=False)
        losses[engine] = torch.tensor(r.losses)
    diff = (losses["manual"] - losses["autograd"]).abs().max().item()
    assert diff <= 1e-4, diff
    assert losses["manual"][-20:].mean() < losses["manual"][:5].mean() - 0.3  # and it learned


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A short finished run of each model on a tiny file."""
    from conftest import make_items

    d = tmp_path_factory.mktemp("zoo")
    data = d / "tiny.txt"
    data.write_text("\n".join(make_items()) + "\n", encoding="utf-8")
    out = {}
    for kind, mc in SMALL.items():
        tc = TrainConfig(steps=60, batch_size=16, optimizer="adamw", lr=0.01, engine="manual", eval_every=0)
        out[kind] = train(RunConfig(DataConfig(path=str(data), block_size=mc.block_size), mc, tc), out_dir=d / kind, progress=False)
    return out


@pytest.mark.parametrize("kind", ["bigram", "rnn", "gru", "gru-ensemble"])
def test_checkpoint_round_trip(kind, runs):
    result = runs[kind]
    run = load_run(result.out_dir)
    assert run.config.model == result.config.model
    for (k, a), b in zip(result.model.state_dict().items(), run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    losses = evaluate_run(result.out_dir)
    for s in ("train", "val", "test"):
        assert losses[s] == pytest.approx(result.summary[f"{s}_loss"], abs=1e-6)


@pytest.mark.parametrize("kind", ["bigram", "rnn", "gru", "gru-ensemble"])
def test_samples_are_seeded_and_deterministic(kind, runs):
    d = runs[kind].out_dir
    a = sample_run(d, n=12, seed=5, prefix="ma", temperature=0.9, top_k=6).samples
    b = sample_run(d, n=12, seed=5, prefix="ma", temperature=0.9, top_k=6).samples
    c = sample_run(d, n=12, seed=6, prefix="ma", temperature=0.9, top_k=6).samples
    assert a == b and a != c and all(s.startswith("ma") for s in a)


@pytest.mark.parametrize("kind", ["rnn", "gru", "gru-ensemble"])
def test_interrupted_run_resumes_bit_exact(kind, tiny_data, tmp_path):
    tc = TrainConfig(steps=40, batch_size=8, optimizer="adamw", lr=0.01, engine="manual", eval_every=0, checkpoint_every=15)
    cfg = RunConfig(DataConfig(path=str(tiny_data), block_size=SMALL[kind].block_size), SMALL[kind], tc)
    full = train(cfg, out_dir=tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    def stop_at_20(step, *_):
        if step == 19:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, out_dir=tmp_path / "cut", progress=False, hooks=(stop_at_20,))
    resumed = resume(tmp_path / "cut", progress=False)  # from the checkpoint after step 15
    assert resumed.losses == full.losses
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("command", ["train", "lr-find", "gradcheck"])
def test_a_batch_smaller_than_the_ensemble_is_a_user_error(command, tiny_data, tmp_path):
    from conftest import assert_user_error, run_cli

    out = ["--out", tmp_path / "r"] if command == "train" else []
    proc = run_cli(command, "--model", "gru", "--members", "4", "--batch-size", "3", "--n-hidden", "8",
                   "--data", tiny_data, *out)
    assert_user_error(proc, "--members 4")
