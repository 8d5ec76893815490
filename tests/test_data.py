import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charmlp.config import DataConfig
from charmlp.data import (
    Items,
    Vocab,
    build_examples,
    build_sequences,
    default_data_path,
    escaped,
    items_from_bytes,
    load_dataset,
    min_items_for_split,
    parse_items,
    read_items,
    shuffled_order,
    split_items,
)
from charmlp.errors import CharmlpError
from conftest import run_cli


def test_embedded_names_split_sizes():
    ds = load_dataset()
    assert ds.vocab.size == 27
    assert ds.vocab.itos[0] == "." and "".join(ds.vocab.itos[1:]) == "abcdefghijklmnopqrstuvwxyz"
    assert {s: len(ds.Y[s]) for s in ("train", "val", "test")} == {"train": 182625, "val": 22655, "test": 22866}
    assert sum(len(v) for v in ds.items.values()) == 32033
    assert ds.X["train"].shape == (182625, 3)


def test_split_matches_global_random_shuffle():
    import random

    words = read_items(default_data_path())
    random.seed(42)
    ref = list(words)
    random.shuffle(ref)
    parts = split_items(words, 42)
    assert parts["train"] == ref[: int(0.8 * len(ref))]
    assert parts["test"] == ref[int(0.9 * len(ref)) :]


def test_emma_windows():
    vocab = Vocab.from_items(["emma"])
    X, Y = build_examples(["emma"], vocab, 3)
    rows = [(vocab.decode(x.tolist()), vocab.decode([int(y)])) for x, y in zip(X, Y)]
    assert rows == [("...", "e"), ("..e", "m"), (".em", "m"), ("emm", "a"), ("mma", ".")]


def _loop_reference(items, vocab, k):
    """The lectures' per-character loop, as the reference the vectorised builder must match."""
    stoi = vocab.stoi
    xs, ys = [], []
    for w in items:
        ctx = [0] * k
        for ch in w + vocab.boundary:
            ix = 0 if ch == vocab.boundary else stoi[ch]
            xs.append(ctx)
            ys.append(ix)
            ctx = ctx[1:] + [ix]
    return torch.tensor(xs), torch.tensor(ys)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_vectorised_windows_match_loop(k):
    items = ["a", "bob", "zzzzzzzzzzzz", "emma", "x", "olivia"]
    vocab = Vocab.from_items(items)
    X, Y = build_examples(items, vocab, k)
    Xr, Yr = _loop_reference(items, vocab, k)
    assert torch.equal(X.long(), Xr) and torch.equal(Y.long(), Yr)


def test_encode_decode_round_trip_and_smallest_dtype():
    vocab = Vocab.from_items(["héllo", "wörld"])
    s = "hölléd"
    assert vocab.decode(vocab.encode(s)) == s
    assert vocab.index_dtype == torch.uint8
    big = Vocab.from_items(["".join(chr(0x4E00 + i) for i in range(300))])
    assert big.size == 301 and big.index_dtype == torch.int16
    X, _ = build_examples(["".join(chr(0x4E00 + i) for i in range(300))], big, 3)
    assert X.dtype == torch.int16 and int(X.max()) == 300


def test_vocab_json_round_trip():
    vocab = Vocab.from_items(["anna", "bo"])
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_encode_rejects_unknown_character():
    vocab = Vocab.from_items(["abc"])
    with pytest.raises(CharmlpError, match="'z'"):
        vocab.encode("az")


def test_unprintable_characters_are_printed_escaped(tmp_path):
    assert escaped("a\x1bb\tc\u200b\n é") == "a\\x1bb\\tc\\u200b\\n é"
    data = tmp_path / "ctl.txt"
    data.write_text("".join(f"{a}\x1b{b}\t{a}\n" for a in "abcdefgh" for b in "ijklmnop"), encoding="utf-8")
    p = run_cli("data", "--data", data)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("vocabulary"))
    assert "\\x1b" in line and "\\t" in line
    assert "\x1b" not in p.stdout and "\t" not in p.stdout
    with pytest.raises(CharmlpError, match=r"'\\x1b' are not in the vocabulary"):
        Vocab.from_items(["abc"]).encode("a\x1b")


def test_boundary_avoids_characters_of_the_data():
    vocab = Vocab.from_items(["st. louis", "a.b"])
    assert vocab.boundary != "." and "." in vocab.itos[1:]
    assert vocab.boundary not in "st. louisa.b"


def test_parse_items_line_endings_bom_spaces_and_blanks():
    text = "\ufeffemma\r\n  olivia \r\n\r\n\nava\n"
    assert parse_items(text) == ["emma", "olivia", "ava"]


def test_read_items_errors(tmp_path):
    with pytest.raises(CharmlpError, match="does not exist"):
        read_items(tmp_path / "nope.txt")
    with pytest.raises(CharmlpError, match="directory"):
        read_items(tmp_path)
    (tmp_path / "blank.txt").write_text("\n \n\n")
    with pytest.raises(CharmlpError, match="no items"):
        read_items(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(CharmlpError, match="line 2"):
        read_items(tmp_path / "latin1.txt")


def test_too_few_items_for_splits(tmp_path):
    need = min_items_for_split()
    p = tmp_path / "few.txt"
    p.write_text("\n".join(["ab"] * (need - 1)))
    with pytest.raises(CharmlpError, match=f"at least {need}"):
        load_dataset(DataConfig(path=str(p)))
    p.write_text("\n".join(["ab"] * need))
    ds = load_dataset(DataConfig(path=str(p)))
    assert all(len(ds.items[s]) > 0 for s in ("train", "val", "test"))


# ----------------------------------------------------------------------------- overlong lines


def test_a_line_over_max_item_len_is_skipped_and_reported_with_its_line_number(tmp_path, capsys):
    from conftest import make_items

    items = make_items(300)
    p = tmp_path / "long.txt"
    p.write_text("\n".join(items[:120] + ["", "x" * 5000] + items[120:]) + "\r\n", encoding="utf-8")
    got = read_items(p, max_len=256)
    err = capsys.readouterr().err
    assert got == items  # every other item, in order
    assert err.startswith(f"note: skipped line 122 (5000 characters) of {p}, longer than --max-item-len 256;")
    assert "`--max-item-len 5000`" in err and len(err.splitlines()) == 1
    assert read_items(p) == items[:120] + ["x" * 5000] + items[120:]  # no limit: kept
    assert capsys.readouterr().err == ""
    # the split of the rest is the split of the file without the line
    ds = load_dataset(DataConfig(path=str(p), block_size=0, sequence=True))
    clean = tmp_path / "clean.txt"
    clean.write_text("\n".join(items) + "\n", encoding="utf-8")
    assert ds.items == load_dataset(DataConfig(path=str(clean), block_size=0, sequence=True)).items
    assert ds.block_size == max(map(len, items)) + 1


def test_several_long_lines_are_counted_and_a_file_of_only_long_lines_is_refused(tmp_path, capsys):
    p = tmp_path / "f.txt"
    p.write_text("ab\n" + "\n".join("y" * (300 + i) for i in range(7)) + "\ncd\n", encoding="utf-8")
    assert read_items(p, max_len=256) == ["ab", "cd"]
    err = capsys.readouterr().err
    assert "skipped 7 lines (2, 3, 4, 5, 6, …; the longest 306 characters)" in err
    p.write_text("y" * 300 + "\n", encoding="utf-8")
    with pytest.raises(CharmlpError, match="every item .* is longer than --max-item-len 256"):
        read_items(p, max_len=256)


def test_a_whole_item_model_trains_on_a_file_with_a_3000_character_line_without_flags(tmp_path, capsys):
    from charmlp import cli
    from conftest import make_items

    p = tmp_path / "f.txt"
    p.write_text("\n".join(make_items(200) + ["z" * 3000]) + "\n", encoding="utf-8")
    assert cli.main(["train", "--model", "gru", "--data", str(p), "--steps", "3", "--n-hidden", "8",
                     "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert "note: skipped line 201 (3000 characters)" in capsys.readouterr().err
    with pytest.raises(CharmlpError, match="longer than a model that reads whole items can take"):
        load_dataset(DataConfig(path=str(p), block_size=0, sequence=True, max_item_len=0))


def test_a_run_config_written_before_max_item_len_keeps_every_line():
    from charmlp.config import DEFAULT_MAX_ITEM_LEN, RunConfig, run_config_from_dict, run_config_to_dict

    d = run_config_to_dict(RunConfig())
    assert run_config_from_dict(d).data.max_item_len == DEFAULT_MAX_ITEM_LEN  # round trip
    del d["data"]["max_item_len"]
    assert run_config_from_dict(d).data.max_item_len == 0  # the split it was trained on: no line skipped


def test_a_gzipped_file_gives_the_same_items_and_split(tmp_path):
    import gzip

    raw = default_data_path().read_bytes()
    gz = tmp_path / "names.txt.gz"
    gz.write_bytes(gzip.compress(raw))
    assert read_items(gz) == read_items()
    assert load_dataset(DataConfig(path=str(gz))).items == load_dataset().items
    gz.write_bytes(gzip.compress(raw)[:-100])  # cut short
    with pytest.raises(CharmlpError, match="does not decompress"):
        read_items(gz)


# ----------------------------------------------------------------------------- streaming read, array-backed items


def _lines_ref(text: str) -> list[str]:
    """The whole-text reading the chunked one must equal: BOM at the start only; `\\n`, `\\r\\n`, `\\r`."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return [s.strip() for s in text.split("\n")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "é", "漢", "😀", " ", "\t", "\n", "\r", "\r\n", "\ufeff", "\u2028", "\x85"]),
                max_size=40), st.integers(1, 9))
def test_chunked_reading_equals_reading_the_whole_text(parts, chunk):
    text = "".join(parts)
    raw = text.encode("utf-8")
    want = [s for s in _lines_ref(text) if s]
    if not want:
        with pytest.raises(CharmlpError, match="no items"):
            items_from_bytes(raw, "t", chunk=chunk)
        return
    assert items_from_bytes(raw, "t", chunk=chunk) == want == parse_items(text)
    assert items_from_bytes(raw, "t") == want  # one chunk


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 1 << 20])
def test_chunk_cuts_at_crlf_lone_cr_bom_and_multibyte_characters(chunk):
    raw = "\ufeffab\r\ncd\re\u00e9f\r\r\n漢字 \r\n\n😀\r".encode()
    assert items_from_bytes(raw, "t", chunk=chunk) == ["ab", "cd", "eéf", "漢字", "😀"]
    assert items_from_bytes(b"x\n\xef\xbb\xbfy\n", "t", chunk=chunk) == ["x", "\ufeffy"]  # a BOM later is a character


@pytest.mark.parametrize("chunk", [1, 3, 5, 1 << 20])
def test_a_non_utf8_byte_or_a_nul_in_a_later_chunk_is_reported_at_its_offset_and_line(chunk):
    raw = b"ab\r\ncd\n\xc3\xa9\rxy\n" * 3 + b"z\xe9\n"
    with pytest.raises(CharmlpError, match=f"byte 0xe9 at offset {len(raw) - 2} \\(line 10\\)"):
        items_from_bytes(raw, "t", chunk=chunk)
    with pytest.raises(CharmlpError, match="contains a NUL byte on line 10"):
        items_from_bytes(raw[:-3] + b"z\x00\n", "t", chunk=chunk)
    with pytest.raises(CharmlpError, match="byte 0xff at offset 7"):  # not UTF-8 wins over a NUL before it
        items_from_bytes(b"a\x00\nbc\nd\xff\n", "t", chunk=chunk)


@pytest.mark.parametrize("chunk", [1, 4, 1 << 20])
def test_long_lines_are_skipped_with_their_line_numbers_across_chunks(chunk, capsys):
    text = "ab\r\n" + "y" * 12 + "\r\rcd\n  " + "z" * 11 + " \nef"
    assert items_from_bytes(text.encode(), "t", max_len=10, chunk=chunk) == ["ab", "cd", "ef"]
    long = [(i + 1, len(s)) for i, s in enumerate(_lines_ref(text)) if len(s) > 10]
    assert long == [(2, 12), (5, 11)]
    assert "skipped 2 lines (2, 5; the longest 12 characters) of t" in capsys.readouterr().err


def test_a_gzip_read_in_small_chunks(tmp_path):
    import gzip

    plain = tmp_path / "f.txt"
    plain.write_bytes("émile\r\nzoë\n\nab\r".encode() * 50)
    gz = tmp_path / "f.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_items(gz, chunk=7) == read_items(plain, chunk=3) == parse_items(plain.read_text(encoding="utf-8"))


def test_items_act_as_a_sequence_of_str():
    strs = ["emma", "", "漢字", "a\ud800b", "zoë"]
    items = Items.from_strs(strs)
    assert items.codes.dtype == np.uint32 and len(items) == 5 and items == strs and list(items) == strs
    assert items[-1] == "zoë" and items[1:3] == strs[1:3] and items.take(np.array([4, 0])) == ["zoë", "emma"]
    assert items.longest() == 4 and items.chars() == 12 and "漢字" in items and items != strs[:4]
    assert [s for batch in items.take(np.array([3, 2, 0])).batches(2) for s in batch] == [strs[3], strs[2], strs[0]]
    assert Items.from_strs(["ab", "c"]).codes.dtype == np.uint8


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 100)))
def test_shuffled_order_is_pythons_shuffle(n, seed):
    import random

    ref = list(range(n))
    random.Random(seed).shuffle(ref)
    assert shuffled_order(n, seed, python_below=0).tolist() == ref == shuffled_order(n, seed).tolist()


def test_load_datasets_splits_of_the_names_are_todays_seeded_shuffle():
    import random

    names = list(read_items())
    random.Random(42).shuffle(names)
    n1, n2 = int(0.8 * len(names)), int(0.9 * len(names))
    ds = load_dataset()
    assert ds.items["train"] == names[:n1] and ds.items["val"] == names[n1:n2] and ds.items["test"] == names[n2:]


@pytest.mark.parametrize("k", [1, 3])
def test_windows_and_rows_of_shuffled_items_of_a_wide_alphabet(k):
    items = Items.from_strs(["漢字a", "b", "", "ccé😀"]).take(np.array([3, 1, 0, 2]))
    vocab = Vocab.from_items(items)
    X, Y = build_examples(items, vocab, k)
    Xr, Yr = _loop_reference(list(items), vocab, k)
    assert torch.equal(X.long(), Xr) and torch.equal(Y.long(), Yr)
    Xs, Ys = build_sequences(items, vocab, 6)
    assert Xs[0].tolist() == [0, *vocab.encode("ccé😀"), 0] and Ys[0].tolist() == [*vocab.encode("ccé😀"), 0, -1]
    with pytest.raises(CharmlpError, match="'x' are not in the vocabulary"):
        build_examples(["ax"], Vocab.from_items(["a"]), k)
