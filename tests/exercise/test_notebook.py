"""The example notebook runs top to bottom (so it cannot rot), in a real Jupyter kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "backprop_exercise.ipynb"
SRC = Path(__file__).resolve().parents[2] / "src"


def test_example_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "<table>" in html  # reports display as HTML tables
    assert "only the contribution through probs" in text
    assert "x − mean/std instead of (x − mean)/std" in text


def test_rnn_notebook_executes(tmp_path, monkeypatch):
    """examples/rnn_exercise.ipynb: backprop through time, the carried state forgotten, then fixed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK.with_name("rnn_exercise.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "\n".join(str(o.get("text", "")) for o in outputs)
    assert "<table>" in "\n".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "only the contribution through hs: h2 is used twice" in text and "4 of 4 correct" in text
