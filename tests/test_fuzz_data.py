"""Property tests: whatever bytes or text a user's file holds, the data loader returns a valid
dataset or raises `CharmlpError` — never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charmlp.config import DataConfig
from charmlp.data import SPLITS, load_dataset, min_items_for_split, parse_items
from charmlp.errors import CharmlpError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text with many lines, some blank, drawn from all of Unicode (no surrogates: not encodable)
lines = st.lists(st.text(max_size=12), min_size=0, max_size=40)
line_endings = st.sampled_from(["\n", "\r\n", "\r"])


def check_loads(raw: bytes, block_size: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "data.txt"
        p.write_bytes(raw)
        try:
            ds = load_dataset(DataConfig(path=str(p), block_size=block_size))
        except CharmlpError as e:
            msg = str(e)
            assert msg and str(p) in msg or "block" in msg, msg
            return
    # a valid dataset: the boundary is no data character, every id is in range, shapes agree
    vocab = ds.vocab
    items = [s for split in SPLITS for s in ds.items[split]]
    assert items and all(s and s == s.strip() and "\n" not in s and "\r" not in s for s in items)
    assert vocab.boundary not in "".join(items)
    assert set(vocab.itos[1:]) == set("".join(items))
    for split in SPLITS:
        X, Y = ds.X[split], ds.Y[split]
        assert X.shape == (len(Y), block_size)
        assert len(Y) == sum(len(s) + 1 for s in ds.items[split])
        if len(Y):
            assert 0 <= int(X.min()) and int(X.max()) < vocab.size and int(Y.max()) < vocab.size
            # each item's last example predicts the boundary
            assert int((Y == 0).sum()) == len(ds.items[split])
    assert ds.X["train"].dtype == vocab.index_dtype


@FUZZ
@given(raw=st.binary(max_size=400), block_size=st.integers(1, 6))
def test_random_bytes(raw, block_size):
    check_loads(raw, block_size)


@FUZZ
@given(ls=lines, nl=line_endings, bom=st.booleans(), block_size=st.integers(1, 5))
def test_random_unicode_text(ls, nl, bom, block_size):
    text = ("\ufeff" if bom else "") + nl.join(ls)
    check_loads(text.encode("utf-8"), block_size)


@FUZZ
@given(ls=st.lists(st.text(st.characters(exclude_characters="\x00", codec="utf-8"), min_size=1, max_size=8), min_size=1, max_size=30))
def test_item_count_decides_between_dataset_and_error(ls):
    """Enough non-blank lines for 80/10/10 give a dataset with all of them; fewer, an error saying so."""
    text = "\n".join(ls)
    n = len(parse_items(text))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "data.txt"
        p.write_text(text, encoding="utf-8")
        if n >= min_items_for_split():
            ds = load_dataset(DataConfig(path=str(p)))
            assert sum(len(ds.items[s]) for s in SPLITS) == n
        else:
            with pytest.raises(CharmlpError, match="no items" if n == 0 else f"has {n} item"):
                load_dataset(DataConfig(path=str(p)))
