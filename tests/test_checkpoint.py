import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from charmlp.checkpoint import (
    CONFIG,
    METRICS,
    SUMMARY,
    VOCAB,
    WEIGHTS,
    atomic_write_text,
    load_run,
    read_saved_net,
    tensors_sha256,
)
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.errors import CharmlpError
from charmlp.evaluate import evaluate_run
from charmlp.models import MLPConfig
from charmlp.numpy_model import describe_model
from charmlp.train import train

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def run_dir(tiny_data, tmp_path):
    cfg = RunConfig(DataConfig(path=str(tiny_data)), MLPConfig(n_embd=6, n_hidden=32),
                    TrainConfig(steps=120, device="cpu", seed=3))
    result = train(cfg, out_dir=tmp_path / "run", progress=False)
    return tmp_path / "run", result


def test_run_directory_files(run_dir):
    d, result = run_dir
    for name in (CONFIG, VOCAB, WEIGHTS, METRICS, SUMMARY):
        assert (d / name).is_file(), name
    rows = [json.loads(line) for line in (d / METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(120))
    assert rows[0]["loss"] == result.losses[0] and rows[0]["lr"] == 0.1
    summary = json.loads((d / SUMMARY).read_text())
    for key in ("init_loss", "train_loss", "val_loss", "test_loss", "steps", "seconds"):
        assert key in summary
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*"))


def test_save_load_identical_eval_losses(run_dir):
    d, result = run_dir
    run = load_run(d)
    assert run.vocab == result.dataset.vocab
    for (k, a), b in zip(result.model.state_dict().items(), run.model.state_dict().values()):
        assert torch.equal(a, b), k
    losses = evaluate_run(d)
    s = result.summary
    assert losses == {"train": s["train_loss"], "val": s["val_loss"], "test": s["test_loss"]}


def test_weights_are_safetensors_not_pickle(run_dir):
    d, _ = run_dir
    raw = (d / WEIGHTS).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "layers.layers.0.weight" in header
    assert any("running_mean" in k for k in header)


def test_damaged_runs_are_user_errors(run_dir, tmp_path):
    d, _ = run_dir
    with pytest.raises(CharmlpError, match="does not exist"):
        load_run(tmp_path / "missing")
    (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:100])
    with pytest.raises(CharmlpError, match="safetensors"):
        load_run(d)
    cfg = json.loads((d / CONFIG).read_text())
    cfg["format"] = 99
    (d / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CharmlpError, match="format"):
        load_run(d)
    (d / VOCAB).unlink()
    cfg["format"] = 1
    (d / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CharmlpError, match="vocab.json"):
        load_run(d)


def test_checkpoint_from_another_config_is_rejected(run_dir):
    d, _ = run_dir
    cfg = json.loads((d / CONFIG).read_text())
    cfg["model"]["n_hidden"] = 33
    (d / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CharmlpError, match="does not match"):
        load_run(d)


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new content")
    assert p.read_text() == "new content"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_checksum_is_the_same_for_torch_tensors_and_numpy_arrays():
    tensors = {"w": torch.randn(3, 4), "d": torch.randn(5, dtype=torch.float64), "i": torch.arange(6).reshape(2, 3),
               "s": torch.tensor(2.5), "b": torch.tensor([True, False])}
    assert tensors_sha256(tensors) == tensors_sha256({k: v.numpy() for k, v in tensors.items()})
    t = torch.randn(3, 4).T  # not contiguous
    assert tensors_sha256({"w": t}) == tensors_sha256({"w": t.numpy()})


def test_weights_carry_a_description_the_numpy_reader_runs(run_dir):
    d, result = run_dir
    header = json.loads((d / WEIGHTS).read_bytes()[8 : 8 + int.from_bytes((d / WEIGHTS).read_bytes()[:8], "little")])
    assert json.loads(header["__metadata__"]["meta"])["net"] == describe_model(result.model)
    saved = read_saved_net(d)
    assert saved is not None and saved.vocab == result.dataset.vocab and saved.data.path == str(result.config.data.path)
    ids = np.random.default_rng(0).integers(0, saved.vocab.size, (7, saved.net.block_size))
    with torch.no_grad():
        want = load_run(d).model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(saved.net(ids), want, rtol=1e-5, atol=1e-5)


def test_runs_written_before_descriptions_read_as_none(tmp_path):
    shutil.copytree(FIXTURES / "mlp_run_v0", tmp_path / "old")
    assert read_saved_net(tmp_path / "old") is None
    assert load_run(tmp_path / "old").model is not None


def saved_vocab(d: Path) -> list[str]:
    return json.loads((d / VOCAB).read_text())["itos"]


def test_the_numpy_reader_makes_the_checks_load_run_makes(run_dir, tmp_path):
    d, _ = run_dir
    vocab = (d / VOCAB).read_text()
    with pytest.raises(CharmlpError, match="does not exist"):
        read_saved_net(tmp_path / "missing")
    cfg = json.loads((d / CONFIG).read_text())
    (d / CONFIG).write_text(json.dumps({**cfg, "model": {**cfg["model"], "n_hidden": 33}}))
    with pytest.raises(CharmlpError, match="does not match the model in config.json"):
        read_saved_net(d)
    (d / CONFIG).write_text(json.dumps({**cfg, "model": {**cfg["model"], "n_hidden": 33.0}}))
    with pytest.raises(CharmlpError, match="wrong type"):
        read_saved_net(d)
    (d / CONFIG).write_text(json.dumps({**cfg, "model": {**cfg["model"], "n_heads": 4}}))
    with pytest.raises(CharmlpError, match="another charmlp version"):
        read_saved_net(d)
    (d / VOCAB).write_text(json.dumps({"itos": [".", *"zyxwvutsrqponmlkjihgfedcba"][: len(saved_vocab(d))]}))
    (d / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CharmlpError, match="mixed up"):
        read_saved_net(d)
    (d / CONFIG).write_text(json.dumps({**cfg, "model": {**cfg["model"], "vocab_size": 99}}))
    with pytest.raises(CharmlpError, match="vocab.json has"):
        read_saved_net(d)
    (d / CONFIG).write_text(json.dumps({**cfg, "format": 99}))
    with pytest.raises(CharmlpError, match="format"):
        read_saved_net(d)
    (d / VOCAB).write_text(vocab)
    (d / CONFIG).write_text(json.dumps(cfg))
    assert read_saved_net(d) is not None
    raw = bytearray((d / WEIGHTS).read_bytes())
    raw[-3] ^= 0x40
    (d / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(CharmlpError, match="fails its checksum"):
        read_saved_net(d)
    (d / WEIGHTS).write_bytes(bytes(raw[:100]))
    with pytest.raises(CharmlpError, match="not a readable safetensors"):
        read_saved_net(d)
