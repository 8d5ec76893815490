"""The registry: every model has the same presets, each preset names real fields, and a model's
name travels through config.json."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from charmlp.config import TrainConfig, model_config_from_dict, model_config_to_dict
from charmlp.errors import CharmlpError
from charmlp.models import MODELS, get_spec, preset
from conftest import SRC

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_the_four_presets_and_they_name_real_fields(name):
    spec = MODELS[name]
    assert {"seed", "quick", "fast", "best"} <= set(spec.presets)
    model_fields = {f.name for f in dataclasses.fields(spec.config)}
    for p in spec.presets:
        train, model = preset(name, p)
        assert set(train) <= TRAIN_FIELDS, (name, p)
        assert set(model) <= model_fields, (name, p)
        spec.config(**model)  # builds


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_config_round_trip_keeps_the_kind(name):
    cfg = MODELS[name].config()
    d = model_config_to_dict(cfg)
    assert d["kind"] == name
    assert model_config_from_dict(d) == cfg


def test_unknown_names_are_user_errors():
    with pytest.raises(CharmlpError, match="unknown model 'nope'"):
        get_spec("nope")
    with pytest.raises(CharmlpError, match="unknown preset 'nope' for model mlp"):
        preset("mlp", "nope")
    with pytest.raises(CharmlpError, match="does not know"):
        model_config_from_dict({"kind": "nope"})
    assert model_config_from_dict({"n_hidden": 7}).kind == "mlp"  # written before the zoo: an MLP


def test_configs_specs_and_presets_import_no_torch():
    """The registry and every model file are torch-free at import: configurations, presets and
    their errors (the CLI's flags come from them); `LanguageModel` loads torch on first use."""
    code = """
import sys
import charmlp.models as m
from charmlp.errors import CharmlpError
for name, spec in m.MODELS.items():
    for p in spec.presets:
        m.preset(name, p)
    cfg = m.model_config(name, block_size=8, vocab_size=27)
    cfg.validate()
for bad in (lambda: m.model_config("mlp", n_hidden=0), lambda: m.get_spec("nope"), lambda: m.preset("mlp", "nope")):
    try:
        m.validate_model_config(bad())
    except CharmlpError:
        pass
before = sorted(k for k in ("torch", "numpy", "numba", "matplotlib") if k in sys.modules)
m.LanguageModel
print(before, "torch" in sys.modules)
"""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]
