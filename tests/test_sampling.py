import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from charmlp.checkpoint import WEIGHTS, decode_tensors, encode_tensors, read_saved_net, save_run
from charmlp.config import DEFAULT_SAMPLE_SEED, DataConfig, RunConfig, TrainConfig
from charmlp.data import Vocab, read_items
from charmlp.errors import CharmlpError
from charmlp.models import MLPConfig
from charmlp.numpy_model import Net
from charmlp.sampling import SAMPLE_CHUNK, _sample_chunks, sample, sample_ids, sample_run, sample_run_stream, uniforms
from charmlp.train import train
from conftest import SRC, assert_user_error, run_cli, run_main_without_heavy_imports
from test_numpy_model import CONFIGS, random_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import make_items

    d = tmp_path_factory.mktemp("s")
    p = d / "items.txt"
    p.write_text("\n".join(make_items()))
    cfg = RunConfig(DataConfig(path=str(p)), MLPConfig(n_embd=6, n_hidden=48),
                    TrainConfig(steps=400, device="cpu", seed=1))
    result = train(cfg, out_dir=d / "run", progress=False)
    return result, d / "run"


def test_same_seed_same_samples(trained):
    result, _ = trained
    a = sample(result.model, result.dataset.vocab, n=50, seed=7).samples
    b = sample(result.model, result.dataset.vocab, n=50, seed=7).samples
    c = sample(result.model, result.dataset.vocab, n=50, seed=8).samples
    assert a == b and a != c and len(a) == 50


def test_samples_use_the_vocabulary_and_never_the_boundary(trained):
    result, _ = trained
    vocab = result.dataset.vocab
    for s in sample(result.model, vocab, n=200, seed=1).samples:
        assert vocab.boundary not in s
        assert set(s) <= set(vocab.itos[1:])


def test_prefix_top_k_temperature_and_max_len(trained):
    result, _ = trained
    vocab = result.dataset.vocab
    out = sample(result.model, vocab, n=30, seed=2, prefix="ma", top_k=3, temperature=0.7)
    assert all(s.startswith("ma") for s in out.samples)
    capped = sample(result.model, vocab, n=30, seed=2, max_len=3)
    assert all(len(s) <= 3 for s in capped.samples)
    with pytest.raises(CharmlpError, match="not in the vocabulary"):
        sample(result.model, vocab, n=3, prefix="Q")
    with pytest.raises(CharmlpError, match="temperature"):
        sample(result.model, vocab, n=3, temperature=0)


def test_top_k_one_is_greedy(trained):
    result, _ = trained
    out = sample(result.model, result.dataset.vocab, n=20, seed=3, top_k=1).samples
    assert len(set(out)) == 1  # the same argmax path for every sample


def test_batched_sampling_matches_logits_distribution(trained):
    """The first character's frequencies follow softmax(logits) of the empty context."""
    result, _ = trained
    model = result.model.eval()
    with torch.no_grad():
        p = torch.softmax(model(torch.zeros(1, model.cfg.block_size, dtype=torch.long)), 1)[0]
    rows, _ = sample_ids(model, 20000, 0, max_new=1)
    first = torch.tensor([r[0] if r else 0 for r in rows])
    freq = torch.bincount(first, minlength=len(p)).float() / len(first)
    assert (freq - p).abs().max() < 0.02


def test_novelty_against_training_file(trained):
    _, run = trained
    out = sample_run(run, n=100, seed=4)
    assert out.novel_fraction is not None and 0.0 <= out.novel_fraction <= 1.0
    d = out.to_dict()
    assert d["in_train_fraction"] == pytest.approx(1 - d["novel_fraction"])


# ----------------------------------------------------------------------------- NumPy sampling


@pytest.mark.parametrize("seed", [0, 1, 42, DEFAULT_SAMPLE_SEED, 2**32 - 1, 2**32 + 7, 2**63 + 5, 2**64 - 1, -1, -(2**63)])
def test_uniforms_are_torch_rands(seed):
    g = torch.Generator().manual_seed(seed)
    draw = uniforms(seed)
    for k in (1, 7, 1000, 3000, 2):
        want = torch.rand(k, 1, generator=g)[:, 0].numpy()
        got = draw(k)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_seeds_outside_torchs_range_are_user_errors(trained):
    result, _ = trained
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(CharmlpError, match="--seed must be between"):
            sample(result.model, result.dataset.vocab, n=2, seed=seed)


def torch_reference(model, n: int, seed: int, prefix_ids=(), temperature=1.0, top_k=None, max_new=20,
                    generator=None) -> list[list[int]]:
    """The sampler as it ran in torch: the whole context through the torch model at every step
    (drawing from `generator` when given, else from a fresh one seeded with `seed`)."""
    g = generator or torch.Generator().manual_seed(seed)
    block, seq = model.cfg.block_size, model.cfg.sequence
    start = [0, *prefix_ids] if seq else ([0] * block + list(prefix_ids))[len(prefix_ids):]
    ctx, out, alive = torch.tensor([start]).repeat(n, 1), [[] for _ in range(n)], list(range(n))
    for _ in range(max_new):
        with torch.no_grad():
            logits = model(ctx[:, -block:])
        logits = (logits[:, -1] if seq else logits).float()
        logits = (logits - logits.max(1, keepdim=True).values) / temperature
        if top_k is not None:
            logits = logits.masked_fill(logits < torch.topk(logits, top_k, 1).values[:, -1:], float("-inf"))
        cdf = torch.softmax(logits, 1).cumsum(1)
        ix = (cdf < torch.rand(len(alive), 1, generator=g) * cdf[:, -1:]).sum(1)
        for row, i in zip(alive, ix.tolist(), strict=True):
            out[row] += [i] if i else []
        keep = ix != 0
        alive = [a for a, k in zip(alive, keep.tolist(), strict=True) if k]
        ctx = torch.cat([ctx[:, int(not seq):], ix[:, None]], 1)[keep]
        if not alive:
            break
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_numpy_sampling_draws_what_the_torch_sampler_drew(name):
    """Same seed, same ids as the torch loop (incremental decoding, sliding past the block included)."""
    model = random_model(name)
    for kw in ({"seed": 3}, {"seed": 4, "prefix_ids": [2, 5], "temperature": 0.6, "top_k": 4}):
        rows, truncated = sample_ids(model, 40, max_new=20, **kw)
        want = torch_reference(model, 40, max_new=20, **kw)
        assert rows == want
        assert truncated == sum(len(r) == 20 for r in want)


VOCAB = Vocab(tuple(".abcdefghij"))  # V = 11 symbols, as random_model's


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """A run directory per model kind, random weights, a data file of their alphabet."""
    d = tmp_path_factory.mktemp("saved")
    data = d / "items.txt"
    data.write_text("\n".join(["abc", "bad", "cafe", "jig", "hide"] * 20) + "\n", encoding="utf-8")
    out = {}
    for name in CONFIGS:
        model = random_model(name)
        save_run(d / name, RunConfig(DataConfig(path=str(data)), model.cfg, TrainConfig()), VOCAB, model)
        out[name] = d / name, model
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_a_saved_run_samples_what_the_model_in_memory_samples(name, saved_runs):
    d, model = saved_runs[name]
    kw = {"n": 30, "seed": 9, "prefix": "b", "temperature": 0.8, "top_k": 6, "max_len": 12}
    assert sample_run(d, **kw) == sample(model, VOCAB, training_items=read_items(d.parent / "items.txt"), **kw)


def test_charmlp_sample_prints_the_same_samples_without_importing_torch(saved_runs):
    d, model = saved_runs["transformer"]
    stdout = run_main_without_heavy_imports(['sample', str(d), '-n', '15', '--seed', '3', '--max-len', '10', '--json'])
    assert json.loads(stdout)["samples"] == sample(model, VOCAB, n=15, seed=3, max_len=10).samples


def rewrite_weights(d: Path, change) -> None:
    """Rewrite model.safetensors after `change(tensors, meta)`, with a valid checksum."""
    tensors, meta = decode_tensors((d / WEIGHTS).read_bytes(), d / WEIGHTS)
    change(tensors, meta)
    (d / WEIGHTS).write_bytes(encode_tensors(tensors, meta))


def test_a_run_without_description_samples_the_same_through_torch(saved_runs, tmp_path):
    for name in ("mlp", "gru"):
        src, _ = saved_runs[name]
        d = shutil.copytree(src, tmp_path / name)
        rewrite_weights(d, lambda t, meta: meta.pop("net"))
        assert read_saved_net(d) is None
        assert sample_run(d, n=25, seed=2) == sample_run(src, n=25, seed=2)
    p = run_cli("sample", tmp_path / "gru", "-n", "25", "--seed", "2", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["samples"] == sample_run(saved_runs["gru"][0], n=25, seed=2).samples


def test_a_run_of_the_previous_release_samples_from_the_command_line(tmp_path):
    run = shutil.copytree(Path(__file__).parent / "fixtures" / "mlp_run_v0", tmp_path / "old")
    p = run_cli("sample", run, "-n", "8", "--seed", "5")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == (Path(__file__).parent / "fixtures" / "mlp_run_v0_samples.txt").read_text().split()


def test_unknown_layer_or_missing_tensor_in_a_run_is_a_user_error(saved_runs, tmp_path):
    src, _ = saved_runs["wavenet"]
    d = shutil.copytree(src, tmp_path / "unknown")
    rewrite_weights(d, lambda t, meta: meta["net"]["layers"]["children"]["layers.1"].update(type="Conv1d"))
    assert_user_error(run_cli("sample", d), "unknown type 'Conv1d'")
    d = shutil.copytree(src, tmp_path / "missing")
    rewrite_weights(d, lambda t, meta: t.pop("layers.layers.2.weight"))
    assert_user_error(run_cli("sample", d), "has no tensor 'layers.layers.2.weight'")


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", ["mlp", "bigram", "gru"])
def test_batches_continue_the_one_uniform_stream(name):
    """Batch after batch, each drawing the next uniforms: what the torch loop draws run batch by
    batch on one generator (so up to SAMPLE_CHUNK samples, one batch: the samples of before)."""
    model = random_model(name)
    got = []
    for flat, lengths, _ in _sample_chunks(Net.from_model(model), 20, uniforms(6), [], 1.0, None, 15, chunk=7):
        ends = np.cumsum(lengths)
        got += [flat[e - k : e].tolist() for e, k in zip(ends, lengths)]
    g = torch.Generator().manual_seed(6)
    assert got == [r for k in (7, 7, 6) for r in torch_reference(model, k, 6, max_new=15, generator=g)]


def test_streamed_samples_are_the_samples_of_the_api(saved_runs):
    d, model = saved_runs["bigram"]
    p = run_cli("sample", d, "-n", "40", "--seed", "11", "--prefix", "b")
    assert p.returncode == 0, p.stderr
    want = sample_run(d, n=40, seed=11, prefix="b")
    assert p.stdout.splitlines() == want.samples == sample(model, VOCAB, n=40, seed=11, prefix="b").samples
    assert f"# {want.novel_fraction:.0%} of samples" in p.stderr
    n = SAMPLE_CHUNK * 2 + 5  # three batches: --json writes, its list streamed, what json.dumps writes
    p = run_cli("sample", d, "-n", str(n), "--seed", "11", "--json")
    assert p.returncode == 0, p.stderr
    want = sample_run(d, n=n, seed=11)
    assert p.stdout == json.dumps(want.to_dict(), ensure_ascii=False) + "\n"
    stream = sample_run_stream(d, n=n, seed=11)
    assert [len(b) for b in stream] == [SAMPLE_CHUNK, SAMPLE_CHUNK, 5]
    assert (stream.novel_fraction, stream.truncated) == (want.novel_fraction, want.truncated)


@pytest.mark.skipif(sys.platform == "win32", reason="the resource module is Unix-only")
def test_a_million_samples_stream_in_bounded_memory(saved_runs, tmp_path):
    """-n 1000000 held everything at once (~700 MB peak for a bigram run); streamed, the peak is
    Python + NumPy + one batch of 10 000 (~50 MB). 250 MB leaves room for allocators and platforms
    while failing the unstreamed sampler. A wrapper process measures its only child, charmlp."""
    d, _ = saved_runs["bigram"]
    out = tmp_path / "samples.txt"
    script = (
        "import resource, subprocess, sys\n"
        f"with open({str(out)!r}, 'w') as f:\n"
        f"    rc = subprocess.run([sys.executable, '-m', 'charmlp', 'sample', {str(d)!r}, '-n', '1000000'], stdout=f).returncode\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(rc, peak / 2**20 if sys.platform == 'darwin' else peak / 2**10)\n"  # bytes on macOS, KiB on Linux
    )
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    rc, peak_mb = p.stdout.split()
    assert rc == "0", p.stderr
    with out.open() as f:
        assert sum(1 for _ in f) == 1_000_000
    assert float(peak_mb) < 250, f"peak RSS {peak_mb} MB"


def test_a_closed_pipe_ends_sampling_quietly(saved_runs):
    d, _ = saved_runs["bigram"]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "charmlp", "sample", str(d), "-n", "1000000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.readline()
    p.stdout.close()  # as `| head -1` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == "", err


# ----------------------------------------------------------------------------- only new items


def test_unique_novel_gives_n_distinct_items_none_in_the_training_file(names_run):
    p = run_cli("sample", names_run, "-n", "500", "--unique", "--novel", "--seed", "4", "--json")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    names = set(read_items())
    assert len(got["samples"]) == len(set(got["samples"])) == 500
    assert not names & set(got["samples"]) and got["novel_fraction"] == 1.0
    assert got["draws"] > 500  # the quick model repeats names and training items: some draws were refused
    again = sample_run(names_run, n=500, seed=4, unique=True, novel=True)
    assert again.samples == got["samples"] and again.draws == got["draws"]


def test_filtered_samples_start_with_the_unfiltered_ones_that_pass(trained):
    result, _ = trained
    vocab, items = result.dataset.vocab, read_items(result.dataset.path)
    plain = sample(result.model, vocab, n=300, seed=5).samples
    kept = list(dict.fromkeys(s for s in plain if s not in set(items) and len(s) >= 4))
    out = sample(result.model, vocab, n=300, seed=5, unique=True, novel=True, training_items=items, min_len=4)
    assert out.samples[: len(kept)] == kept and len(out.samples) == 300 and len(set(out.samples)) == 300
    assert min(map(len, out.samples)) >= 4 and out.draws > 300
    excluded = sample(result.model, vocab, n=100, seed=5, exclude=plain[:50]).samples
    assert not set(excluded) & set(plain[:50]) and len(excluded) == 100
    with pytest.raises(CharmlpError, match="training_items"):
        sample(result.model, vocab, n=3, novel=True)
    with pytest.raises(CharmlpError, match="--min-len"):
        sample(result.model, vocab, n=3, min_len=30, max_len=20)


def test_a_model_that_cannot_reach_n_stops_with_one_line(saved_runs, tmp_path):
    """Items of one character: at most 10 distinct (the alphabet a…j)."""
    d, _ = saved_runs["gru"]
    p = run_cli("sample", d, "-n", "20", "--unique", "--min-len", "1", "--max-len", "1", "--json")
    assert p.returncode == 1, p.stderr
    got = json.loads(p.stdout)
    assert len(got["samples"]) == len(set(got["samples"])) <= 10 and got["draws"] == 20 * 10 + SAMPLE_CHUNK
    assert p.stderr.strip().splitlines()[-1] == (
        f"# found {len(got['samples'])} of 20 items (distinct, at least 1 character long) in {got['draws']} draws, "
        f"the most it makes (10 × N + 10000 = {got['draws']}); exit 1")
    first = tmp_path / "first.txt"  # the one sample `-n 1` draws: excluded, the first batch keeps nothing
    first.write_text(sample_run(d, n=1, max_len=5, min_len=1).samples[0] + "\n", encoding="utf-8")
    p = run_cli("sample", d, "-n", "1", "--max-len", "5", "--min-len", "1", "--exclude", first, "--json")
    got = json.loads(p.stdout)
    assert p.returncode == 0 and got["draws"] > 1 and got["samples"] != first.read_text().split()


def test_novel_names_the_data_file_that_moved_and_exclude_stands_for_it(saved_runs, tmp_path):
    src, _ = saved_runs["bigram"]
    d = shutil.copytree(src, tmp_path / "run")
    cfg = json.loads((d / "config.json").read_text())
    cfg["data"]["path"] = str(tmp_path / "gone.txt")
    (d / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run_cli("sample", d, "--novel"), "if it moved, name it with --exclude FILE")
    moved = tmp_path / "moved.txt"
    shutil.copy(src.parent / "items.txt", moved)
    p = run_cli("sample", d, "-n", "30", "--novel", "--exclude", moved, "--seed", "3")
    assert p.returncode == 0, p.stderr
    got = p.stdout.splitlines()  # random weights: an empty item is one of them
    assert len(got) == 30 and not set(got) & set(read_items(moved))
    assert_user_error(run_cli("sample", d, "--exclude", tmp_path / "nope.txt"), "--exclude")
