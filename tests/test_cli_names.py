"""One name per idea on the command line: every flag documented, old spellings accepted with one
note, old config.json keys loaded, and each command offering only the flags it reads."""

import argparse
import json
import shutil
from pathlib import Path

import pytest

from charmlp import cli
from charmlp.checkpoint import load_run, read_run_config
from charmlp.config import config_from_dict, run_config_from_dict
from charmlp.errors import CharmlpError
from charmlp.models import MLPConfig, WaveNetConfig

FIXTURE = Path(__file__).parent / "fixtures" / "mlp_run_v0"  # its config.json says n_layers, tanh_gain, out_scale


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of every leaf command: train, …, exercise init, exercise check, …"""
    out = []
    todo = [("charmlp", cli.build_parser())]
    while todo:
        name, p = todo.pop()
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and name != "charmlp":
            out.append((name, p))
        for sub in subs:
            todo += [(f"{name} {n}", q) for n, q in sub.choices.items()]
    return out


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


def test_every_command_is_walked():
    names = {n for n, _ in _parsers()}
    assert {"charmlp train", "charmlp lr-find", "charmlp sample", "charmlp exercise check-layer"} <= names


@pytest.mark.parametrize("name,parser", _parsers(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_flag_has_help_and_a_metavar(name, parser):
    """A help text for each argument, and a named metavar (or its choices) for each that takes a value:
    never argparse's bare `--top-k TOP_K`."""
    for a in _visible(parser):
        assert a.help, f"{name} {a.option_strings or a.dest} has no help"
        if a.nargs != 0:
            assert a.metavar is not None or a.choices is not None, f"{name} {a.option_strings or a.dest} has no metavar"


def test_every_n_steps_flag_says_so_the_same_way():
    train = dict(_parsers())["charmlp train"]
    every = {o: a for a in train._actions for o in a.option_strings if o.endswith("-every")}
    assert set(every) == {"--eval-every", "--checkpoint-every", "--sync-every", "--diagnostics-every"}
    for o, a in every.items():
        assert a.metavar == "N" and "every N steps" in a.help, o


def test_preset_help_names_every_preset():
    from charmlp.models import MODELS

    help_ = next(a.help for a in dict(_parsers())["charmlp train"]._actions if "--preset" in a.option_strings)
    for name in {n for s in MODELS.values() for n in s.presets}:
        assert f"{name}: " in help_, name


def test_members_help_names_its_metavar():
    a = next(a for a in dict(_parsers())["charmlp train"]._actions if "--members" in a.option_strings)
    assert a.metavar == "M" and "M copies" in a.help and "K " not in a.help


def test_lr_find_offers_only_the_flags_it_reads():
    """lr-find sets lr and steps itself, never evaluates, checkpoints, calibrates or sets threads:
    its --help lists none of those; the four that a user may still try are refused with a message."""
    p = dict(_parsers())["charmlp lr-find"]
    shown = {o for a in _visible(p) for o in a.option_strings}
    for ignored in ("--threads", "--checkpoint-every", "--eval-every", "--sync-every", "--no-calibrate"):
        assert ignored not in {o for a in p._actions for o in a.option_strings}, ignored
    assert not shown & set(cli.LR_FIND_REFUSED)
    assert set(cli.LR_FIND_FLAGS) <= shown and {"--lr-min", "--lr-max", "--lr-steps", "--model", "--n-layer"} <= shown


def test_n_layer_is_not_ambiguous():
    """`--n-layer` is a prefix of its old spelling `--n-layers`: the exact flag wins, with no note."""
    args = cli.build_parser("train").parse_args(["train", "--out", "r", "--n-layer", "3"])
    assert args.n_layer == 3


@pytest.mark.parametrize("old,new,dest,value,model", [
    ("--n-layers", "--n-layer", "n_layer", "2", "mlp"),
    ("--n-levels", "--n-layer", "n_layer", "2", "wavenet"),
    ("--tanh-gain", "--init-gain", "init_gain", "1.5", "mlp"),
    ("--out-scale", "--init-out-scale", "init_out_scale", "0.5", "wavenet"),
])
def test_old_model_flags_work_with_one_note(capsys, old, new, dest, value, model):
    args = cli.build_parser("train").parse_args(["train", "--out", "r", "--model", model, old, value])
    assert capsys.readouterr().err.splitlines() == [f"note: {old} is now {new}"]
    mc = cli.run_config_from_args(args).model
    assert getattr(mc, dest) == type(getattr(mc, dest))(value)


def test_old_flag_counts_as_given_for_resume_and_messages():
    argv = ["train", "--out", "r", "--n-layers", "2"]
    origins = cli.default_origins(cli.build_parser("train"), "train", argv)
    assert "--n-layer" not in origins and "--n-layers" not in origins and "--n-hidden" in origins


def test_check_layer_kind_is_now_layer(capsys, monkeypatch):
    seen = {}

    class Report:
        ok = True

        def format_text(self) -> str:
            return "ok"

    def check_layer_file(target, layer, timeout):
        seen.update(target=target, layer=layer)
        return Report()

    monkeypatch.setattr("charmlp.exercise.runner.check_layer_file", check_layer_file)
    assert cli.main(["exercise", "check-layer", "f.py:Tanh", "--kind", "tanh"]) == 0
    assert seen == {"target": "f.py:Tanh", "layer": "tanh"}
    assert capsys.readouterr().err.splitlines() == ["note: --kind is now --layer"]
    assert cli.main(["exercise", "check-layer", "f.py:Linear", "--layer", "linear"]) == 0
    assert seen["layer"] == "linear" and capsys.readouterr().err == ""


def test_old_config_keys_load():
    cfg, _ = read_run_config(FIXTURE)
    assert isinstance(cfg.model, MLPConfig) and cfg.model.n_layer == 1
    assert cfg.model.init_gain == pytest.approx(5 / 3) and cfg.model.init_out_scale == 0.1
    assert load_run(FIXTURE).config.model == cfg.model  # the weights' record, in the old names, agrees
    wn = run_config_from_dict({"model": {"kind": "wavenet", "n_levels": 2, "tanh_gain": 1.0}}).model
    assert isinstance(wn, WaveNetConfig) and (wn.n_layer, wn.init_gain) == (2, 1.0)


def test_both_spellings_of_a_key_are_refused():
    with pytest.raises(CharmlpError, match="n_layers.*n_layer"):
        config_from_dict(MLPConfig, {"n_layers": 1, "n_layer": 2}, "model")


def test_a_new_run_writes_the_new_keys(tmp_path, tiny_data):
    run = shutil.copytree(FIXTURE, tmp_path / "old")
    assert cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "new"), "--steps", "2",
                     "--n-hidden", "8", "--device", "cpu", "--no-progress"]) == 0
    new = json.loads((tmp_path / "new" / "config.json").read_text())["model"]
    assert {"n_layer", "init_gain", "init_out_scale"} <= set(new)
    assert not {"n_layers", "tanh_gain", "out_scale"} & set(new)
    assert "n_layers" in json.loads((run / "config.json").read_text())["model"]  # old runs are read, not rewritten
