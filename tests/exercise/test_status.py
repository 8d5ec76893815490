"""`charmlp exercise status`: every marked file of a directory re-checked, counted per part, the next
step and the hints used; a file that does not parse is one line."""

from __future__ import annotations

import json

from charmlp import cli
from charmlp.exercise.chain_starter import starter_text
from charmlp.exercise.hints import hint
from charmlp.exercise.status import file_status, format_text


def test_status_counts_parts_next_step_hints_and_a_syntax_error(tmp_path, capsys):
    filled = starter_text("rnn", "rnn.py").replace(
        "    dlogits = None", "    dlogits = (torch.softmax(logits, -1) - F.one_hot(Yb, 27)) / (n * 3)")
    (tmp_path / "rnn.py").write_text(filled.replace("    dhs = None", "    dhs = torch.zeros(1)"))
    (tmp_path / "broken.py").write_text("# charmlp-exercise: model=gru\ndef part1(:\n")
    (tmp_path / "other.py").write_text("print('not an exercise')\n")
    hint(tmp_path / "rnn.py", "dhs")
    assert cli.main(["exercise", "status", str(tmp_path), "--json"]) == 0
    files = {f["file"]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert set(files) == {"rnn.py", "broken.py"}
    rnn = files["rnn.py"]
    assert rnn["parts"][0]["approximate"] + rnn["parts"][0]["exact"] == 1
    assert rnn["parts"][0]["wrong"] == 1 and rnn["parts"][0]["missing"] == 12 and rnn["next"] == "dhs"
    assert rnn["parts"][1]["missing"] == 1  # part 2 trains once part 1 is complete
    assert rnn["hints"] == 1 and "1 of 15 right, next: dhs; 1 hint, 0 reveals" in rnn["summary"]
    assert "SyntaxError" in files["broken.py"]["error"] and not files["broken.py"]["parts"]
    # the text: the file that does not parse is one line (re-checked on its own: one child process, not two)
    text = format_text([file_status(tmp_path / "broken.py")], tmp_path).splitlines()
    assert len(text) == 1 and text[0].startswith("broken.py (gru): error: broken.py, line 2") and "Traceback" not in text[0]


def test_an_empty_directory_and_a_missing_one(tmp_path, capsys):
    assert cli.main(["exercise", "status", str(tmp_path)]) == 0
    assert "no exercise files in" in capsys.readouterr().out
    assert cli.main(["exercise", "status", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no such directory" in err and len(err.splitlines()) == 1
