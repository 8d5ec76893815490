"""`charmlp runs`: one table of run directories, the options that differ, and one picture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import charmlp
from charmlp.cli import main
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.models import MLPConfig
from charmlp.runs import collect_runs, column_names, flatten, format_table, smooth_points

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> Path:
    """runs/{b3,b5,b5w}: block size 3 / 5, width 16 / 16 / 32 on a tiny data file."""
    from conftest import make_items

    root = tmp_path_factory.mktemp("runs")
    data = root / "tiny.txt"
    data.write_text("\n".join(make_items()) + "\n", encoding="utf-8")
    folder = root / "runs"
    for name, block, hidden in (("b3", 3, 16), ("b5", 5, 16), ("b5w", 5, 32)):
        cfg = RunConfig(DataConfig(path=str(data), block_size=block), MLPConfig(n_hidden=hidden, n_embd=4),
                        TrainConfig(steps=120, batch_size=16, eval_every=10))
        charmlp.train(cfg, out_dir=folder / name, progress=False)
    return folder


def run_main(capsys, *args: object) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *args: object) -> str:
    code, _, err = run_main(capsys, *args)
    err = err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, (code, err)
    return err


def test_flatten_and_column_names():
    assert flatten({"a": 1, "m": {"x": [1, 2], "k": {"y": None}}}) == {"a": 1, "m.x": [1, 2], "m.k.y": None}
    assert column_names(["model.n_hidden", "data.block_size", "train.seed", "model.seed"]) == {
        "model.n_hidden": "n_hidden", "data.block_size": "block_size", "train.seed": "train.seed", "model.seed": "model.seed"}


def test_table_shows_the_two_differing_options_and_the_losses(three_runs, capsys):
    code, out, err = run_main(capsys, "runs", three_runs)
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0].split()
    # block_size (once, though data.block_size and model.block_size both hold it) and n_hidden; nothing else differs
    assert header == ["run", "kind", "block_size", "n_hidden", "params", "steps", "train", "val", "test", "time"]
    assert len(lines) == 4
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in three_runs.iterdir()}
    for line, name, block, hidden in zip(lines[1:], ("b3", "b5", "b5w"), (3, 5, 5), (16, 16, 32)):
        cells = line.split()
        s = summaries[name]
        assert cells[0].endswith(name) and cells[1] == "mlp" and cells[2:4] == [str(block), str(hidden)]
        assert cells[4] == f"{s['n_params']:,}" and cells[5] == "120"
        assert cells[6:9] == [f"{s['train_loss']:.4f}", f"{s['val_loss']:.4f}", f"{s['test_loss']:.4f}"]


def test_sort_json_and_params_of_older_runs(three_runs, capsys, tmp_path):
    code, out, _ = run_main(capsys, "runs", *(three_runs / n for n in ("b3", "b5", "b5w")), "--json", "--sort", "val")
    rows = json.loads(out)
    assert [r["val_loss"] for r in rows] == sorted(r["val_loss"] for r in rows)
    assert all(set(r["options"]) == {"data.block_size", "model.n_hidden"} for r in rows)
    assert all(r["config"]["model.n_embd"] == 4 and r["status"] == "finished" for r in rows)
    rows = collect_runs([three_runs], sort="n_hidden")
    assert [r.options["model.n_hidden"] for r in rows] == [16, 16, 32]
    # a run written before summary.json had n_params: counted from model.safetensors' header
    old = tmp_path / "old"
    shutil.copytree(three_runs / "b5w", old)
    s = json.loads((old / "summary.json").read_text())
    n = s.pop("n_params")
    (old / "summary.json").write_text(json.dumps(s))
    assert collect_runs([old])[0].n_params == n == sum(p.numel() for p in charmlp.load_run(old).model.parameters())


def test_plot_draws_the_val_rows_of_metrics(three_runs, capsys, tmp_path):
    rows = [json.loads(x) for x in (three_runs / "b3" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_loss" in r for r in rows) == 12  # --eval-every 10 over 120 steps
    png = tmp_path / "val.png"
    code, _, err = run_main(capsys, "runs", three_runs, "--plot", png)
    assert code == 0 and png.read_bytes().startswith(PNG) and err.startswith("val loss:")
    code, _, err = run_main(capsys, "runs", three_runs, "--plot", png, "--curve", "train")
    assert code == 0 and err.startswith("training loss (smoothed):")


def test_plot_falls_back_to_training_loss_and_says_so(three_runs, capsys, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(three_runs, runs)
    for d in runs.iterdir():  # runs trained with --eval-every 0 (or before it existed) have no val rows
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        (d / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "val_loss"}) + "\n" for r in rows))
    png = tmp_path / "curves.png"
    code, _, err = run_main(capsys, "runs", runs, "--plot", png)
    assert code == 0 and png.read_bytes().startswith(PNG)
    assert "training loss (smoothed)" in err and "no val_loss rows" in err
    # one run with val rows among runs without: both kinds, and the title says so
    shutil.copy(three_runs / "b3" / "metrics.jsonl", runs / "b3" / "metrics.jsonl")
    code, _, err = run_main(capsys, "runs", runs, "--plot", png)
    assert code == 0 and err.startswith("val loss where metrics.jsonl has it, else training loss")


def test_smooth_points():
    xs, ys, k = smooth_points([(i, float(i % 2)) for i in range(100)], chunks=10)
    assert k == 10 and len(xs) == 10 and ys == [0.5] * 10 and xs[0] == 4.5


def test_unfinished_run_is_listed_with_its_step(tmp_path, tiny_data, capsys):
    import os
    import signal

    def interrupt(step, model, lr, loss):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = RunConfig(DataConfig(path=str(tiny_data)), MLPConfig(n_hidden=8, n_embd=2), TrainConfig(steps=20, batch_size=8))
    with pytest.raises(charmlp.errors.TrainingInterrupted):
        charmlp.train(cfg, out_dir=tmp_path / "u", progress=False, hooks=(interrupt,))
    table = format_table(collect_runs([tmp_path / "u"]))
    assert "unfinished (step 5 of 20)" in table and "–" in table.splitlines()[1]


def test_bad_input_gets_one_line_errors(tmp_path, three_runs, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a charmlp run directory" in one_line_error(capsys, "runs", empty)
    assert "does not exist" in one_line_error(capsys, "runs", tmp_path / "nowhere")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"name": "not ours"}')
    assert "not written by charmlp" in one_line_error(capsys, "runs", foreign)
    broken = tmp_path / "broken"
    shutil.copytree(three_runs / "b3", broken)
    (broken / "summary.json").write_text("{not json")
    assert "not valid JSON" in one_line_error(capsys, "runs", broken)
    assert "unknown --sort column 'nope'" in one_line_error(capsys, "runs", three_runs, "--sort", "nope")
    assert ".png" in one_line_error(capsys, "runs", three_runs, "--plot", tmp_path / "x.jpg")
    assert "does not exist" in one_line_error(capsys, "runs", three_runs, "--plot", tmp_path / "no" / "x.png")
    monkeypatch.chdir(tmp_path)  # no DIR and no ./runs
    assert "no run directories given" in one_line_error(capsys, "runs")


# ----------------------------------------------------------------------------- damaged runs


def _damaged_copy(three_runs: Path, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(three_runs, runs)
    return runs


def _notes(out: str) -> list[str]:
    """The table's lines after its header and one row per run."""
    return out.splitlines()[4:]


def test_truncated_weights_are_listed_as_damaged(three_runs, tmp_path, capsys):
    runs = _damaged_copy(three_runs, tmp_path)
    weights = runs / "b5" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:-100])
    with pytest.raises(charmlp.errors.CharmlpError):  # what eval refuses, runs reports
        charmlp.load_run(runs / "b5")
    code, out, _ = run_main(capsys, "runs", runs)
    assert code == 1
    _, healthy, _ = run_main(capsys, "runs", three_runs)
    lines = out.splitlines()
    assert [x.split()[1:] for x in lines[:4]] == [x.split()[1:] for x in healthy.splitlines()[:4]]  # rows as before
    assert _notes(out) == [f"{runs / 'b5'}: damaged: model.safetensors truncated ({len(raw) - 100:,} of {len(raw):,} bytes)"]
    code, out, _ = run_main(capsys, "runs", runs, "--json")
    assert code == 1
    status = {Path(r["run"]).name: r["status"] for r in json.loads(out)}
    assert status["b3"] == status["b5w"] == "finished" and status["b5"].startswith("damaged: model.safetensors truncated (")
    # cut inside the header, or to nothing at all; or bytes appended
    for cut in (raw[:40], raw[:5], raw + b"\0" * 8):
        weights.write_bytes(cut)
        code, out, _ = run_main(capsys, "runs", runs / "b5")
        assert code == 1 and "damaged: model.safetensors" in out, out
    assert "8 bytes after its tensors" in out


def test_config_of_another_model_kind_is_damaged(three_runs, tmp_path, capsys):
    from charmlp.checkpoint import FORMAT_VERSION, read_run_config
    from charmlp.config import run_config_to_dict
    from charmlp.models import WaveNetConfig

    runs = _damaged_copy(three_runs, tmp_path)
    cfg, vocab = read_run_config(runs / "b3")
    wavenet = RunConfig(cfg.data, WaveNetConfig(vocab_size=vocab.size, n_hidden=8, n_embd=4), cfg.train)
    (runs / "b3" / "config.json").write_text(json.dumps({"format": FORMAT_VERSION, **run_config_to_dict(wavenet)}))
    with pytest.raises(charmlp.errors.CharmlpError):
        charmlp.load_run(runs / "b3")
    code, out, _ = run_main(capsys, "runs", runs)
    assert code == 1
    assert out.splitlines()[1].split()[1] == "wavenet"
    assert _notes(out) == [f"{runs / 'b3'}: damaged: model.safetensors was written for another model configuration "
                           "or vocabulary than config.json and vocab.json describe"]
    code, out, _ = run_main(capsys, "runs", runs / "b5", runs / "b5w")  # the healthy ones alone
    assert code == 0 and "damaged" not in out


def test_vocab_with_a_character_removed_is_damaged(three_runs, tmp_path, capsys):
    runs = _damaged_copy(three_runs, tmp_path)
    p = runs / "b5w" / "vocab.json"
    vocab = json.loads(p.read_text())
    n = len(vocab["itos"])
    vocab["itos"] = vocab["itos"][:-1]
    p.write_text(json.dumps(vocab))
    code, out, _ = run_main(capsys, "runs", runs)
    assert code == 1
    assert _notes(out) == [f"{runs / 'b5w'}: damaged: vocab.json has {n - 1} characters but config.json says {n}"]
    # config.json edited to agree: the weights still record the old vocabulary
    cfg = json.loads((runs / "b5w" / "config.json").read_text())
    cfg["model"]["vocab_size"] = n - 1
    (runs / "b5w" / "config.json").write_text(json.dumps(cfg))
    code, out, _ = run_main(capsys, "runs", runs / "b5w")
    assert code == 1 and "damaged: model.safetensors was written for another model configuration" in out


def test_healthy_runs_exit_0(three_runs, capsys):
    fixture = Path(__file__).parent / "fixtures" / "mlp_run_v0"  # written before the model zoo
    code, out, err = run_main(capsys, "runs", three_runs, fixture)
    assert code == 0, err
    assert len(out.splitlines()) == 5 and "damaged" not in out


def test_embedding_table_of_another_vocabulary_is_damaged(three_runs, tmp_path, capsys):
    runs = _damaged_copy(three_runs, tmp_path)
    p = runs / "b3" / "model.safetensors"
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    rows, cols = header["layers.layers.0.weight"]["shape"]  # the MLP's embedding table
    header["layers.layers.0.weight"]["shape"] = [rows * cols // 2, 2]  # the same bytes, other rows
    text = json.dumps(header).encode()
    p.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    code, out, _ = run_main(capsys, "runs", runs)
    assert code == 1
    assert _notes(out) == [f"{runs / 'b3'}: damaged: model.safetensors has embedding tables whose rows are not "
                           f"the {rows} characters of vocab.json"]


def test_parse_header_checks_the_tensor_entries():
    from charmlp.checkpoint import parse_header

    def file(entries: dict, data: int) -> bytes:
        text = json.dumps(entries).encode()
        return len(text).to_bytes(8, "little") + text + b"\0" * data

    ok = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "b": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]}}
    raw = file(ok, 32)
    assert set(parse_header(raw, len(raw))) == {"a", "b"}
    for entries, reason in (
        ({**ok, "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 32]}}, "damaged header entry for 'b'"),
        ({**ok, "b": {"dtype": "Q7", "shape": [1], "data_offsets": [24, 32]}}, "damaged header entry for 'b'"),
        ({**ok, "b": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]}}, "overlap or leave gaps"),
        ({"a": [1]}, "damaged header entry for 'a'"),
    ):
        raw = file(entries, 32)
        with pytest.raises(ValueError, match=reason):
            parse_header(raw, len(raw))


def test_an_older_runs_renamed_fields_share_the_new_column() -> None:
    """A run written before `n_layers` became `n_layer` (and tanh_gain/out_scale the init_ names)
    shows its values under the new names, so old and new runs line up in one table."""
    from charmlp.runs import read_run_row

    config = read_run_row(Path(__file__).parent / "fixtures" / "mlp_run_v0").config
    assert config["model.n_layer"] == 1 and config["model.init_out_scale"] == 0.1
    assert not {"model.n_layers", "model.tanh_gain", "model.out_scale"} & set(config)
