"""Command line: parses arguments and calls the same functions a notebook user calls."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, distributed
from .config import (
    DEFAULT_MAX_ITEM_LEN,
    DEFAULT_MAX_LEN,
    DEFAULT_SAMPLE_SEED,
    DEVICES,
    DTYPE_NAMES,
    ENGINES,
    LECTURE_SEED,
    MAX_BLOCK_SIZE,
    OPTIMIZERS,
    SCHEDULES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_range,
    parse_duration,
)
from .distributed import TIMEOUT_S
from .errors import CharmlpError, ReportedElsewhere, TrainingInterrupted, flag, value_origins
from .lock import RunDirLock

if TYPE_CHECKING:
    from .diagnostics import DiagnosticsRecorder
    from .train import TrainResult

# Only argparse and the configuration are imported here (the models' flags come from their
# configurations, which import no torch): `charmlp --help`, every subcommand's `--help` and a flag
# error start without torch, NumPy, Numba or matplotlib. Each command imports what it needs when it runs.


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: charmlp train: …`, exit code 2, like every user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


class Renamed(argparse.Action):
    """The old spelling of a flag (hidden from --help): one note on stderr, then the value is the new flag's."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: object) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(p: argparse._ActionsContainer, old: str, action: argparse.Action) -> None:
    """Accept `old` for the flag `action` adds, as `Renamed` (same type, choices and destination)."""
    p.add_argument(old, action=Renamed, new=action.option_strings[0], dest=action.dest, type=action.type,
                   choices=action.choices, metavar=action.metavar, default=action.default, help=argparse.SUPPRESS)


def _add_data_args(p: argparse.ArgumentParser, block_default: int | None = 3) -> None:
    p = p.add_argument_group("data")
    p.add_argument("--data", metavar="FILE", help="UTF-8 text file, one item per line (default: the embedded names.txt)")
    p.add_argument("--block-size", type=int, default=block_default, metavar="K",
                   help="characters of context (default " + (f"{block_default})" if block_default else _block_defaults()))
    p.add_argument("--max-item-len", type=int, default=DEFAULT_MAX_ITEM_LEN, metavar="N",
                   help=f"skip lines longer than N characters, with a note naming them (default {DEFAULT_MAX_ITEM_LEN}; "
                        "0: no limit)")


def _block_defaults() -> str:
    """'the model's: mlp 3, wavenet 8, …; whole-item models: the longest item + 1)'."""
    from .models import MODELS

    windows = [f"{n} {s.config().block_size}" for n, s in MODELS.items() if not s.config.sequence]
    return f"the model's: {', '.join(windows)}; models that read whole items: the longest item + 1)"


# every model's configuration fields become flags; these are set from the data instead
_DATA_FIELDS = ("vocab_size", "block_size")


def _model_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Field name → (the field, the models that have it), over every registered model."""
    from .models import MODELS

    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name, spec in MODELS.items():
        for f in dataclasses.fields(spec.config):
            if f.name not in _DATA_FIELDS:
                out.setdefault(f.name, (f, []))[1].append(name)
    return out


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, and one flag per model configuration field (unset: the model's own default); a
    field's old names (its configurations' `renamed`) are accepted as `Renamed` flags."""
    from .models import MODELS

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=sorted(MODELS), default="mlp",
                   help="; ".join(f"{n}: {s.about}" for n, s in MODELS.items()) + " (default mlp)")
    old_names = {old: new for s in MODELS.values() for old, new in s.config.renamed.items()}
    for name, (f, kinds) in _model_fields().items():
        action = g.add_argument("--" + name.replace("_", "-"), **_field_flag(name, f, kinds))
        for old in (o for o, new in old_names.items() if new == name):
            add_renamed(g, "--" + old.replace("_", "-"), action)


def _field_flag(name: str, f: dataclasses.Field, kinds: list[str]) -> dict:
    """argparse keywords for a model field: its type, and a help saying what it is in each model
    (one text where all agree) and each model's default."""
    from .models import MODELS

    def show(v: object) -> str:
        return ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, (int, float)) else str(v)

    defaults = {k: show(getattr(MODELS[k].config(), name)) for k in kinds}
    shown = next(iter(defaults.values())) if len(set(defaults.values())) == 1 else ", ".join(
        f"{k} {v}" for k, v in defaults.items())
    only = f"{', '.join(kinds)} only; " if len(kinds) < len(MODELS) else ""
    about: dict[str, list[str]] = {}  # help text → the models whose field it describes
    for k in kinds:
        field_k = next(g for g in dataclasses.fields(MODELS[k].config) if g.name == name)
        about.setdefault(field_k.metadata.get("help", name), []).append(k)
    what = next(iter(about)) if len(about) == 1 else "; ".join(f"{', '.join(ks)}: {h}" for h, ks in about.items())
    help_ = f"{what} ({only}default {shown})"
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        return {"action": argparse.BooleanOptionalAction, "default": None, "help": help_}
    if "choices" in f.metadata:
        return {"choices": f.metadata["choices"], "help": help_}
    return {"type": {"int": int, "float": float, "str": str}[kind], "metavar": name.split("_")[-1][0].upper(), "help": help_}


def _model_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The model fields set on the command line; a user error for one the chosen model lacks."""
    from .models import get_spec

    given = {name: getattr(args, name) for name in _model_fields() if getattr(args, name, None) is not None}
    fields = {f.name for f in dataclasses.fields(get_spec(args.model).config)}
    foreign = [n for n in given if n not in fields]
    if foreign:
        flags = ", ".join("--" + n.replace("_", "-") for n in foreign)
        raise CharmlpError(f"{flags} does not apply to {flag('--model', args.model)}; see `charmlp train --model {args.model} --help`")
    return given


# what each preset is for (every model has these; `--preset`'s help lists them all)
PRESET_ABOUT = {
    "seed": "the lectures' setup (mlp, wavenet: 200k steps)",
    "quick": "a short demo run",
    "fast": "the lectures' val loss in a fraction of their time",
    "best": "the best model in 10 minutes: gru's is --budget 10m (planned from the data and this machine), "
            "the others' the best found on names in 10 minutes",
    "budget": "what --budget T starts from (rnn, gru, transformer; T = 10m unless given): steps, ensemble and dropout "
              "planned from the data and this machine",
}


def _train_options() -> dict[str, tuple[str, dict]]:
    """Training flags → (their --help group, argparse keywords); unset ones come from the model's preset."""
    from .models import MODELS

    presets = sorted({n for s in MODELS.values() for n in s.presets})
    opt, run = "optimisation", "run control"
    return {
        "--preset": (opt, {"choices": presets, "default": "seed", "help": "each model's own: " + "; ".join(
            f"{n}: {PRESET_ABOUT[n]}" for n in sorted(presets, key=list(PRESET_ABOUT).index)) + " (default seed)"}),
        "--steps": (opt, {"type": int, "metavar": "N", "help": "optimizer steps"}),
        "--budget": (opt, {"metavar": "T", "help": "train the best this model does in T of wall time (30s, 10m, 1.5h): "
                           "the `budget` preset's settings (mlp, wavenet, bigram: `best`'s) unless --preset is given, "
                           "steps (and for rnn, gru, transformer "
                           "the ensemble and dropout) planned from the data and a calibration of this machine"}),
        "--batch-size": (opt, {"type": int, "metavar": "B", "help": "examples per minibatch (default 32)"}),
        "--lr": (opt, {"type": float, "metavar": "LR", "help": "learning rate (default 0.1)"}),
        "--lr-final": (opt, {"type": float, "metavar": "LR", "help": "learning rate after decay (default 0.01)"}),
        "--schedule": (opt, {"choices": SCHEDULES,
                             "help": "learning-rate schedule (default step: lr → lr-final at half way)"}),
        "--optimizer": (opt, {"choices": OPTIMIZERS, "help": "sgd: plain SGD; adamw: AdamW (default sgd)"}),
        "--weight-decay": (opt, {"type": float, "metavar": "WD", "help": "weight decay (default 0)"}),
        "--seed": (opt, {"type": int, "metavar": "S", "help": "seed of the generator that draws init and batches"}),
        "--no-calibrate": (opt, {"action": "store_true", "help": "keep BatchNorm's running statistics instead of "
                                                                 "calibrating over the train split"}),
        "--engine": (run, {"choices": ENGINES, "help": "auto (default): the fused fast step where it runs (CPU, mlp), "
                           "else manual; fast: only the fused step; autograd | manual: the readable eager engines "
                           "(autograd or the hand-written backward)"}),
        "--threads": (run, {"type": int, "metavar": "N", "help": "CPU threads for torch and NumPy's BLAS (default: 2 "
                            "for the whole-item models rnn, gru, transformer, whose matrices are worth splitting; 1 for "
                            "the others, fastest for their small ones)"}),
        "--device": (run, {"choices": DEVICES, "help": "auto picks CUDA when available (default auto)"}),
        "--eval-every": (run, {"type": int, "metavar": "N", "help": "evaluate the val split every N steps (eval mode), "
                               "into metrics.jsonl and the progress bar (default: about 20 times per run; 0: never)"}),
        "--checkpoint-every": (run, {"type": int, "metavar": "N", "help": "save a resumable checkpoint every N steps "
                                     "(default: only on Ctrl-C/SIGTERM)"}),
        "--sync-every": (run, {"type": int, "metavar": "N", "help": "eager engines: read the loss back to the host "
                               "every N steps, not after each one, and check it then (default: 50 on a GPU, 1 on the "
                               "CPU; the same losses either way)"}),
        "--no-progress": (run, {"action": "store_true", "help": "no progress bar"}),
    }


def _add_train_args(p: argparse.ArgumentParser, flags: Collection[str] | None = None) -> None:
    """Data, model and the training flags in `flags` (default: all), each in its --help group."""
    _add_data_args(p, block_default=None)
    _add_model_args(p)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, (group, kwargs) in _train_options().items():
        if flags is None or name in flags:
            if group not in groups:
                groups[group] = p.add_argument_group(group)
            groups[group].add_argument(name, **kwargs)


_TRAIN_FLAGS = {  # argparse dest → TrainConfig field
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "lr_final": "lr_final",
    "schedule": "schedule", "optimizer": "optimizer", "weight_decay": "weight_decay",
    "engine": "engine", "seed": "seed", "device": "device", "checkpoint_every": "checkpoint_every",
    "eval_every": "eval_every", "sync_every": "sync_every",
}
# what `train --resume` may change: nothing that alters a number of the run
_RESUME_FLAGS = ("device", "threads", "checkpoint_every", "sync_every", "no_progress", "nproc", "rank_timeout")


def model_config_from_args(args: argparse.Namespace, model_preset: dict | None = None) -> ModelConfig:
    """The chosen model's defaults, then its preset's values, then the flags given; the block
    size from --block-size when given."""
    from .models import get_spec

    mc = dataclasses.replace(get_spec(args.model).config(**(model_preset or {})), **_model_overrides(args))
    if args.block_size is None:
        return mc
    check_range("--block-size", args.block_size, 1, MAX_BLOCK_SIZE)  # 0 would mean "the model's" to the data config
    return dataclasses.replace(mc, block_size=args.block_size)


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The model's preset first, then every flag the user set."""
    from .models import preset

    budget = getattr(args, "budget", None)
    origins = getattr(args, "origins", {})
    if budget is not None:
        if args.steps is not None:
            raise CharmlpError("--steps and --budget both set the length of the run; give one of them")
        if origins.get("--preset") == "the default":  # --budget alone: the `budget` preset's settings, else `best`'s
            from .models import get_spec
            args.preset = "budget" if "budget" in get_spec(args.model).presets else "best"
    train_preset, model_preset = preset(args.model, args.preset)
    for name in (*train_preset, *(model_preset or {})):  # a message names these as the preset's, not the user's
        if origins.get(opt := "--" + name.replace("_", "-")) == "the default":
            origins[opt] = f"the `{args.preset}` preset's"
    tc = dataclasses.replace(TrainConfig(), **train_preset)
    # a command without a flag (lr-find has no --eval-every) leaves the preset's value
    tc = dataclasses.replace(tc, **{f: getattr(args, a) for a, f in _TRAIN_FLAGS.items() if getattr(args, a, None) is not None})
    if args.steps is not None:  # a step count given outranks a preset's budget of positions or time
        tc = dataclasses.replace(tc, positions=0, budget=0.0)
    if budget is not None:
        tc = dataclasses.replace(tc, budget=parse_duration(budget))
    if getattr(args, "no_calibrate", False):
        tc = dataclasses.replace(tc, calibrate_bn=False)
    mc = model_config_from_args(args, model_preset)
    return RunConfig(DataConfig(path=args.data, block_size=mc.block_size, sequence=mc.sequence,
                                max_item_len=args.max_item_len), mc, tc)


def cmd_data(args: argparse.Namespace) -> int:
    from .data import escaped, load_dataset

    check_range("--block-size", args.block_size, 1, MAX_BLOCK_SIZE)
    info = load_dataset(DataConfig(path=args.data, block_size=args.block_size, max_item_len=args.max_item_len)).summary()
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    print(f"file        {info['path']}")
    print(f"vocabulary  {info['vocab_size']} characters, boundary '{escaped(info['boundary'])}': {escaped(info['vocab'])}")
    print(f"block size  {info['block_size']}")
    print(f"{'split':<8}{'items':>10}{'examples':>12}")
    for s in ("train", "val", "test"):
        print(f"{s:<8}{info['items'][s]:>10}{info['examples'][s]:>12}")
    return 0


def _train_or_resume(args: argparse.Namespace) -> tuple[TrainResult, DiagnosticsRecorder | None]:
    if args.resume is not None:  # the flags first: a wrong one is reported before torch loads
        if args.force:
            raise CharmlpError("--force replaces the run in --out DIR; --resume continues one and replaces nothing: drop --force")
        if args.diagnostics or args.diagnostics_every is not None:
            raise CharmlpError("--diagnostics cannot be combined with --resume: the statistics of the interrupted "
                               "part were not kept; train afresh with --diagnostics")
        changed = [
            "--" + dest.replace("_", "-") for dest, value in vars(args).items()
            if dest in args.train_dests and dest not in _RESUME_FLAGS and value != args.defaults[dest]
        ]
        if changed:
            raise CharmlpError(
                f"{', '.join(changed)} cannot change when resuming: the run continues with the options in "
                f"{args.resume}/config.json (only --device, --threads, --checkpoint-every, --sync-every, --no-progress, "
                "--nproc and --rank-timeout may be given)"
            )
    else:
        cfg = run_config_from_args(args)

    from .diagnostics import DiagnosticsRecorder, default_every, init_warning_hook
    from .engines.threads import auto_threads, set_threads
    from .train import resume, train

    if args.resume is not None:
        from .checkpoint import read_run_config

        try:
            sequence = read_run_config(args.resume)[0].model.sequence
        except CharmlpError:  # resume says what is wrong with the run directory
            sequence = False
    else:
        sequence = cfg.model.sequence
    set_threads(auto_threads(sequence) if args.threads is None else args.threads)
    if args.resume is not None:
        result = resume(args.resume, progress=not args.no_progress, hooks=(init_warning_hook(),),
                        device=args.device, checkpoint_every=args.checkpoint_every, sync_every=args.sync_every)
        return result, None
    recorder = None
    hooks = [init_warning_hook()]  # warns on stderr at step 0 if the init is confidently wrong
    if args.diagnostics or args.diagnostics_every is not None:
        every = args.diagnostics_every if args.diagnostics_every is not None else default_every(cfg.train.steps)
        if every < 1:
            raise CharmlpError(f"--diagnostics-every must be at least 1, got {every}")
        recorder = DiagnosticsRecorder(every)
        hooks.append(recorder)
    result = train(cfg, out_dir=args.out, progress=not args.no_progress, hooks=tuple(hooks), force=args.force)
    if recorder is not None and distributed.rank() == 0:  # the one rank that ran the hooks
        with RunDirLock(result.out_dir, "charmlp train"):
            recorder.save(result.out_dir)
    return result, recorder


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc is not None:  # the launcher starts N ranks of this very command, less --nproc
        if not 1 <= args.nproc <= 1024:
            raise CharmlpError(f"--nproc must be between 1 and 1024, got {args.nproc}")
        if distributed.launched():
            raise CharmlpError("--nproc starts its own processes: drop it when running under torchrun")
        return distributed.launch(args.nproc, _without_nproc(args.argv))
    if args.rank_timeout is not None:
        distributed.set_timeout(args.rank_timeout)
    run_dir = args.resume if args.resume is not None else args.out
    try:
        result, recorder = _train_or_resume(args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one after the loop: the last checkpoint is on disk
        from .checkpoint import STATE

        if not (Path(run_dir) / STATE).is_file():
            raise
        raise TrainingInterrupted(
            f"stopped; the last checkpoint in {run_dir} is kept: continue with `charmlp train --resume {run_dir}`",
            signum=signal.SIGINT,
        ) from None
    if distributed.rank() != 0:  # rank 0 reports the run
        return 0
    s = result.summary
    estimate = f" (estimate on {s['train_loss_items']:,} items)" if s["train_loss_estimate"] else ""
    print(
        ("fitted in closed form, no steps" if s["init_loss"] is None else f"step-0 loss {s['init_loss']:.4f}")
        + f" (ln V = {s['ln_vocab']:.4f}) | train {s['train_loss']:.4f}{estimate} "
        f"| val {s['val_loss']:.4f} | test {s['test_loss']:.4f} | {s['steps']} steps in {s['seconds']:.1f} s"
    )
    print(f"run saved to {result.out_dir}; try `charmlp sample {result.out_dir}`"
          + (f" or `charmlp diagnose {result.out_dir}`" if recorder is not None else ""))
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line without its --nproc N (or --nproc=N)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .evaluate import evaluate_run

    splits = ("train", "val", "test")  # data.SPLITS (the CLI starts without numpy)
    # a bar on stderr while a terminal watches (tqdm's disable=None), counted in predicted characters
    with tqdm(desc="eval", unit="char", unit_scale=True, disable=None, mininterval=0.5, leave=False) as bar:
        losses = evaluate_run(args.run, tuple(s for s in splits if s in (args.split or splits)), progress=bar.update)
    if args.json:
        print(json.dumps(losses))
    else:
        for split, loss in losses.items():
            print(f"{split:<6}{loss:.4f}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Print the samples batch by batch as they are drawn (memory independent of -n); --json
    writes the same object `json.dumps(Samples.to_dict())` would, its list streamed. With filters
    (--unique, --novel, --exclude, --min-len) that found fewer than N within the draw bound: a
    line saying how many, exit 1."""
    from .data import read_items
    from .sampling import draw_bound, sample_run_stream

    exclude = read_items(args.exclude, flag="--exclude") if args.exclude is not None else ()
    stream = sample_run_stream(
        args.run, n=args.n, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
        prefix=args.prefix, max_len=args.max_len, unique=args.unique, novel=args.novel, exclude=exclude,
        min_len=args.min_len,
    )
    out = sys.stdout
    if args.json:
        out.write('{"samples": [')
    wrote = False  # a filtered batch may be empty: the separator goes between items, never first
    for batch in stream:
        if args.json and batch:
            out.write((", " if wrote else "") + ", ".join(json.dumps(s, ensure_ascii=False) for s in batch))
            wrote = True
        elif not args.json:
            out.write("".join(s + "\n" for s in batch))
        out.flush()
    if args.json:
        out.write("], " + json.dumps(stream.stats())[1:] + "\n")  # the statistics after the samples, as to_dict orders them
    elif stream.novel_fraction is not None:
        print(f"# {stream.novel_fraction:.0%} of samples are not in the training file", file=sys.stderr)
    if stream.count < args.n:
        wanted = [w for w, on in (("distinct", args.unique), ("novel", args.novel), ("not excluded", bool(exclude)),
                                  (f"at least {args.min_len} character" + "s" * (args.min_len > 1) + " long", args.min_len > len(args.prefix))) if on]
        print(f"# found {stream.count} of {args.n} items ({', '.join(wanted)}) in {stream.draws} draws, the most it "
              f"makes (10 × N + 10000 = {draw_bound(args.n)}); exit 1", file=sys.stderr)
        return 1
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """One row per item (or a per-character table per item, or JSON); exit 1 if any item was
    not scorable (a character outside the run's vocabulary)."""
    from .data import escaped, items_from_bytes, read_items
    from .scoring import score

    items = list(args.items)
    if args.file == "-":
        items += items_from_bytes(sys.stdin.buffer.read(), "stdin")
    elif args.file is not None:
        items += read_items(args.file, flag="--file")
    if not items:
        raise CharmlpError("give the items to score: `charmlp score DIR ITEM…`, or a file of them with --file F (- for stdin)")
    scores = score(args.run, items, per_char=args.per_char)
    if args.sort:
        scores = scores.sorted()
    if args.json:
        print(json.dumps(scores.to_dict(), ensure_ascii=False))
    elif args.per_char:
        for i, s in enumerate(scores.items):
            print(("\n" if i else "") + escaped(s.item) + "  " + (s.problem and f"not scorable: {s.problem}" or
                  f"log-likelihood {s.log_likelihood:.4f} | nll/char {s.nll_per_char:.4f} | perplexity {s.perplexity:.3f}"))
            if s.per_char is None:
                continue
            w = max(7, max(len(escaped(c.context)) for c in s.per_char))
            print(f"{'pos':>4}  {'context':<{w}}  char  {'prob':>8}  {'log-prob':>9}  {'rank':>4}")
            for c in s.per_char:
                print(f"{c.position:>4}  {escaped(c.context):<{w}}  {escaped(c.char):<4}  {c.prob:>8.4g}  "
                      f"{c.logprob:>9.4f}  {c.rank:>4}")
    else:
        w = min(40, max(4, *(len(escaped(s.item)) for s in scores.items)))
        print(f"{'item':<{w}}  {'log-likelihood':>14}  {'nll/char':>8}  {'perplexity':>10}")
        for s in scores.items:
            print(f"{escaped(s.item):<{w}}  " + (f"not scorable: {s.problem}" if s.problem else
                  f"{s.log_likelihood:>14.4f}  {s.nll_per_char:>8.4f}  {s.perplexity:>10.3f}"))
    if bad := len(scores.not_scorable):
        sys.stdout.flush()
        print(f"# {bad} of {len(items)} items not scorable: characters outside the run's vocabulary; exit 1", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- diagnostics: lr-find, diagnose


def cmd_lr_find(args: argparse.Namespace) -> int:
    fixed = [f for f, v in (("--steps", args.steps), ("--lr", args.lr), ("--lr-final", args.lr_final),
                            ("--schedule", args.schedule)) if v is not None]
    if fixed:
        raise CharmlpError(f"lr-find sets the learning rate itself; drop {', '.join(fixed)} "
                           "and use --lr-min, --lr-max, --lr-steps")
    cfg = run_config_from_args(args)  # flag errors before torch loads

    from .lrfind import LR_FIND, lr_find, save_lr_find

    result = lr_find(cfg, lr_min=args.lr_min, lr_max=args.lr_max, steps=args.lr_steps, progress=not args.no_progress)
    if args.out is not None:
        save_lr_find(result, args.out)
    if args.json:
        out = {k: v for k, v in result.to_dict().items() if k not in ("lrs", "losses", "smoothed")}
        print(json.dumps({**out, "steps": len(result.lrs), "out": args.out}))
        return 0
    print(f"suggested lr {result.suggested_lr:.3g} (90% of the loss's fall to its minimum)")
    print(f"steepest-descent lr {result.steepest_lr:.3g} | lowest smoothed loss at lr {result.min_loss_lr:.3g}")
    if result.diverged_at is not None:
        print(f"the loss blew up at step {result.diverged_at} (lr {result.lrs[-1]:.3g}); the sweep stopped there")
    if args.out is not None:
        print(f"plot and numbers in {Path(args.out) / 'lr_find.png'} and {Path(args.out) / LR_FIND}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .report import diagnose

    rep = diagnose(args.run)
    n = rep.numbers
    if args.json:
        print(json.dumps(n, ensure_ascii=False))
        return 0
    if n["init_check"]:
        print(("WARNING " if n["init_check"]["confidently_wrong"] else "") + n["init_check"]["message"])
    if n["losses"]:
        print("final loss  " + " | ".join(f"{k} {v:.4f}" for k, v in n["losses"].items() if v is not None))
    for state, rows in (n["tanh"] or {}).items():
        for r in rows:
            print(f"{state:<8} tanh {r['layer']:<10} mean {r['mean']:+.3f} std {r['std']:.3f} "
                  f"saturated {r['saturated_pct']:5.1f}% dead {r['dead_units']}/{r['units']}")
    for name, v in (n["update_ratio_final"] or {}).items():
        if v is not None and name.endswith(".weight") and "BatchNorm" not in name:
            print(f"log10 update ratio {name:<22} {v:+.2f} (guide −3)")
    for m in rep.missing:
        print(f"note: {m}")
    print(f"report written to {rep.path}")
    return 0


# the training flags lr-find reads: the sweep sets the learning rate and the step count itself,
# never evaluates, checkpoints or calibrates, and runs on the process's default threads
LR_FIND_FLAGS = ("--preset", "--batch-size", "--optimizer", "--weight-decay", "--seed", "--engine", "--device",
                 "--no-progress")
LR_FIND_REFUSED = ("--steps", "--lr", "--lr-final", "--schedule")  # cmd_lr_find says what to use instead


def _add_lr_find(p: argparse.ArgumentParser) -> None:
    _add_train_args(p, LR_FIND_FLAGS)
    options = _train_options()
    for name in LR_FIND_REFUSED:  # hidden: accepted only to be refused with a message naming the sweep's flags
        p.add_argument(name, **{**options[name][1], "help": argparse.SUPPRESS})
    sweep = p.add_argument_group("sweep")
    sweep.add_argument("--lr-min", type=float, default=1e-3, metavar="LR", help="first learning rate (default 1e-3)")
    sweep.add_argument("--lr-max", type=float, default=1.0, metavar="LR", help="last learning rate (default 1)")
    sweep.add_argument("--lr-steps", type=int, default=1000, metavar="N",
                       help="steps, lr spaced evenly in log10 (default 1000)")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="write lr_find.png and lr_find.json here")
    out.add_argument("--json", action="store_true", help="print one JSON object with suggested_lr and steepest_lr")
    p.set_defaults(func=cmd_lr_find)


def _add_diagnose(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="DIR", help="run directory")
    p.add_argument("--json", action="store_true", help="print the key numbers as one JSON object")
    p.set_defaults(func=cmd_diagnose)


# ── gradcheck ─────────────────────────────────────────────────────────────────────────────────


def cmd_gradcheck(args: argparse.Namespace) -> int:
    """Print the gradient check table (or JSON); exit 1 if any row is outside the tolerance."""
    mc = model_config_from_args(args)  # flag errors before torch loads

    from .data import load_dataset
    from .gradcheck import gradcheck

    report = gradcheck(
        dtype=args.dtype, seed=args.seed, batch_size=args.batch_size, model=mc,
        dataset=load_dataset(DataConfig(path=args.data, block_size=mc.block_size, sequence=mc.sequence,
                                        max_item_len=args.max_item_len)),
    )
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.format_table())
    return 0 if report.ok else 1


def _add_gradcheck(p: argparse.ArgumentParser) -> None:
    _add_data_args(p, block_default=None)
    _add_model_args(p)
    check = p.add_argument_group("check")
    check.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="float64: round-off ≤ 1e-10 (default float32)")
    check.add_argument("--seed", type=int, default=LECTURE_SEED, metavar="S", help="seed of the parameters and the batch")
    check.add_argument("--batch-size", type=int, default=32, metavar="B", help="examples in the batch, at least 2 (default 32)")
    check.add_argument("--json", action="store_true", help="print one JSON object with a row per tensor")
    p.set_defaults(func=cmd_gradcheck)


# ── exercise (the learner's side) ──────────────────────────────────────────────────────────────


def cmd_exercise_init(args: argparse.Namespace) -> int:
    from .exercise.starter import write_layer_template, write_starter

    if args.layer:
        if args.part or args.model != "mlp":
            raise CharmlpError("--part and --model are for an exercise's starter, --layer for a layer's template: give one")
        out = write_layer_template(args.layer, args.out or f"{args.layer}.py")
        from .exercise.catalog import CLASS_NAMES

        command = " ".join(["charmlp exercise check-layer", f"{out}:{CLASS_NAMES[args.layer]}", "--layer", args.layer])
        print(f"wrote {out}; fill it in, then: `{command}`")
        return 0
    out = write_starter(args.out or "backprop_exercise.py", args.part, args.model)
    print(f"wrote {out}; fill it in, then: charmlp exercise check {out}")
    return 0


def cmd_exercise_check(args: argparse.Namespace) -> int:
    from .exercise.runner import check_file

    reports = check_file(args.file, parts=(args.part,) if args.part else None, seed=args.seed, timeout=args.timeout)
    ok = all(r.ok for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "parts": [r.to_dict() for r in reports]}, ensure_ascii=False))
    else:
        print("\n\n".join(r.format_text() for r in reports))
    return 0 if ok else 1


def cmd_exercise_check_layer(args: argparse.Namespace) -> int:
    from .exercise.runner import check_layer_file

    report = check_layer_file(args.target, args.layer, timeout=args.timeout)
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.format_text())
    return 0 if report.ok else 1


def cmd_exercise_status(args: argparse.Namespace) -> int:
    from .exercise.status import format_text, status

    statuses = status(args.dir, timeout=args.timeout)
    if args.json:
        print(json.dumps({"dir": str(args.dir), "files": [s.to_dict() for s in statuses]}, ensure_ascii=False))
    else:
        print(format_text(statuses, args.dir))
    return 0


def cmd_exercise_hint(args: argparse.Namespace) -> int:
    from .exercise.hints import hint

    if args.step is None and not args.reset:
        raise CharmlpError("name the step to hint at (e.g. dprobs), or give --reset")
    print(hint(args.file, args.step or "", reveal=args.reveal, reset=args.reset))
    return 0


def _add_exercise(p: argparse.ArgumentParser) -> None:
    esub = p.add_subparsers(dest="exercise_command", required=True, metavar="SUBCOMMAND")
    parts = (1, 2, 3, 4)
    from .exercise.catalog import KINDS, help_epilog

    q = esub.add_parser("init", help="write the exercise's starter file, or a layer's template (never overwrites)")
    q.add_argument("--out", metavar="FILE",
                   help="the file to write (default backprop_exercise.py, or K.py with --layer K)")
    q.add_argument("--part", type=int, choices=parts, help="only this part's function (default: all four)")
    q.add_argument("--model", default="mlp", choices=("mlp", "wavenet", "rnn", "gru", "transformer"),
                   help="whose backward to derive, in lecture order (default mlp)")
    q.add_argument("--layer", choices=tuple(KINDS), metavar="K",
                   help="a ready-to-fill template of layer kind K instead (one of: " + ", ".join(KINDS) + ")")
    q.set_defaults(func=cmd_exercise_init)
    q = esub.add_parser("check", help="check your file's gradients atom by atom and say what is wrong (exit 1 if any is)")
    q.add_argument("file", metavar="FILE", help="your exercise file (from `charmlp exercise init`)")
    q.add_argument("--part", type=int, choices=parts, help="only this part (default: every part the file defines)")
    q.add_argument("--seed", type=int, metavar="S", help="seed of the batch and parameters (default: the lectures')")
    q.add_argument("--timeout", type=float, default=60.0, metavar="SEC", help="time limit for your code (default 60)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_exercise_check)
    q = esub.add_parser("status", help="progress of every exercise file in a directory (re-checked as `check` does)")
    q.add_argument("dir", nargs="?", default=".", metavar="DIR", help="where the exercise files are (default: here)")
    q.add_argument("--timeout", type=float, default=60.0, metavar="SEC", help="time limit per file (default 60)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_exercise_status)
    q = esub.add_parser("hint", help="the next hint for one step (shape and lines, the rule, branches and shapes)")
    q.add_argument("file", metavar="FILE", help="your exercise file")
    q.add_argument("step", nargs="?", metavar="STEP", help="the gradient, e.g. dprobs or dh1")
    how = q.add_mutually_exclusive_group()
    how.add_argument("--reveal", action="store_true", help="print the reference expression")
    how.add_argument("--reset", action="store_true", help="forget the hints used on FILE (deletes FILE.hints.json)")
    q.set_defaults(func=cmd_exercise_hint)
    q = esub.add_parser("check-layer", help="check your layer class against charmlp's: output, dx and every parameter's "
                        ".grad, at several shapes and seeds", epilog=help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("target", metavar="FILE:CLASS", help="your file and the layer class in it")
    which = q.add_mutually_exclusive_group(required=True)  # the old --kind counts as --layer
    layer = which.add_argument("--layer", choices=tuple(KINDS), metavar="K",
                               help="the charmlp layer your class stands for (listed below)")
    add_renamed(which, "--kind", layer)
    q.add_argument("--timeout", type=float, default=60.0, metavar="SEC", help="time limit for your code (default 60)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_exercise_check_layer)


# ── runs ──────────────────────────────────────────────────────────────────────────────────────


def cmd_runs(args: argparse.Namespace) -> int:
    """The table of run directories (or JSON), and with --plot one picture of their loss curves."""
    from .runs import collect_runs, format_table, plot_runs

    dirs = args.dirs or ["runs"]
    if not args.dirs and not Path("runs").is_dir():
        raise CharmlpError("no run directories given and there is no ./runs folder; pass run directories or a folder of them")
    rows = collect_runs(dirs, sort=args.sort)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], ensure_ascii=False))
    else:
        print(format_table(rows))
    sys.stdout.flush()  # the table before the note on stderr
    if args.plot is not None:
        what = plot_runs(rows, args.plot, curve=args.curve)
        print(f"{what}: {args.plot}", file=sys.stderr)
    return 1 if any(r.damaged for r in rows) else 0  # eval would refuse one


def _add_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="*", metavar="DIR", help="run directories, or folders of them (default ./runs)")
    p.add_argument("--sort", metavar="COL",
                   help="sort by val, train, test, params, steps, time, run or an option column (default: as given)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    p.add_argument("--plot", metavar="FILE.png", help="write the runs' loss curves on shared axes to this PNG")
    p.add_argument("--curve", choices=("val", "train"), default="val",
                   help="val (default): val_loss rows of metrics.jsonl, or the smoothed training loss where a run "
                        "has none; train: always the smoothed training loss")
    p.set_defaults(func=cmd_runs)


def _add_data(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data)


def _add_train(p: argparse.ArgumentParser) -> None:
    run_dir = p.add_argument_group("run directory")
    where = run_dir.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR", help="run directory to write")
    where.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its last checkpoint")
    run_dir.add_argument("--force", action="store_true",
                         help="with --out: replace the run already in DIR (kept until the new run's first checkpoint)")
    _add_train_args(p)
    diag = p.add_argument_group("diagnostics")
    diag.add_argument("--diagnostics", action="store_true",
                      help="record update ratios and tanh statistics while training (diagnostics.json)")
    diag.add_argument("--diagnostics-every", type=int, metavar="N",
                      help="with --diagnostics: sample the statistics every N steps (default: about 1000 samples per run)")
    ranks = p.add_argument_group("processes (data-parallel, see docs/distributed.md)")
    ranks.add_argument("--nproc", type=int, metavar="N",
                       help="train data-parallel in N processes on this machine (torch's elastic launcher, as "
                            "torchrun --standalone --nproc-per-node N; --batch-size stays the global batch)")
    ranks.add_argument("--rank-timeout", type=float, metavar="S",
                       help=f"under torchrun: stop the run when a rank has not answered for S seconds "
                            f"(default {TIMEOUT_S:g})")
    dests = {a.dest for a in p._actions} - {"help", "out", "resume", "force"}
    p.set_defaults(func=cmd_train, train_dests=dests, defaults={d: p.get_default(d) for d in dests})


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="DIR", help="run directory")
    p.add_argument("--json", action="store_true", help='print {"train": …, "val": …, "test": …}')
    p.add_argument("--split", action="append", choices=("train", "val", "test"),
                   help="evaluate only this split (repeatable; default all three, each exact, the whole split)")
    p.set_defaults(func=cmd_eval)


def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="DIR", help="run directory")
    p.add_argument("-n", type=int, default=20, metavar="N", help="how many items (default 20)")
    p.add_argument("--seed", type=int, default=DEFAULT_SAMPLE_SEED, metavar="S", help="sampling seed (same seed, same items)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="<1 sharper, >1 more varied (default 1)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample only among the K most likely characters")
    p.add_argument("--prefix", default="", metavar="TEXT", help="every sample starts with this text")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, metavar="N",
                   help=f"longest item, prefix included (default {DEFAULT_MAX_LEN})")
    p.add_argument("--min-len", type=int, default=0, metavar="N",
                   help="shortest item, prefix included: shorter samples are drawn again (default 0)")
    only = p.add_argument_group("only new items (each refused sample is drawn again; the draws stop at 10 × N + 10000, "
                                "then a line says how many it found and the exit code is 1)")
    only.add_argument("--unique", action="store_true", help="N distinct items")
    only.add_argument("--novel", action="store_true", help="no item of the run's data file (found from its config.json)")
    only.add_argument("--exclude", metavar="FILE", help="no item of this file (one per line); with --novel, it stands "
                                                       "for a data file that moved")
    p.add_argument("--json", action="store_true", help="print a JSON object with samples, novel_fraction and draws")
    p.set_defaults(func=cmd_sample)


def cmd_tune(args: argparse.Namespace) -> int:
    """The search, then its one-screen summary."""
    seconds = parse_duration(args.budget)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    from .tune import STUDY_DB, check_search, format_summary, tune

    check_search(models, args.trials)  # flag errors before torch loads
    from .engines.threads import auto_threads, set_threads

    set_threads(auto_threads(True) if args.threads is None else args.threads)
    try:
        result = tune(args.data, seconds, args.out, models=models, trials=args.trials, seed=args.seed,
                      device=args.device, progress=not args.no_progress)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        raise TrainingInterrupted(f"stopped; every finished trial is kept in {Path(args.out) / STUDY_DB}: "
                                  "run the same command to go on", signum=getattr(e, "signum", signal.SIGINT)) from None
    print(format_summary(result))
    return 0


def _add_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="FILE", help="UTF-8 text file, one item per line (default: the embedded names.txt)")
    p.add_argument("--budget", required=True, metavar="T", help="wall time of the whole search: 30s, 10m, 1.5h")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the study (study.db, resumable), a run directory per trial, summary.json and search.png")
    p.add_argument("--models", default="gru,transformer", metavar="M,M",
                   help="models to search among: rnn, gru, transformer (default gru,transformer)")
    p.add_argument("--trials", type=int, metavar="N", help="trials in all, each of budget ÷ N (default: as many of a "
                   "tenth of the budget each as fit)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sampler and of every trial's run")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA when available")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tune)


def _add_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="DIR", help="run directory")
    p.add_argument("items", nargs="*", metavar="ITEM", help="items to score")
    p.add_argument("--file", metavar="F", help="also score the items of this file, one per line (- : stdin)")
    p.add_argument("--sort", action="store_true", help="most to least likely (items not scorable last)")
    p.add_argument("--per-char", action="store_true", help="a table per item: position, context, character, "
                                                          "probability, log-probability, rank among the vocabulary")
    p.add_argument("--json", action="store_true", help="print one JSON object with a row per item")
    p.set_defaults(func=cmd_score)


# command → (one line for `charmlp --help`, the function that adds its arguments)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "data": ("vocabulary and examples per split of a data file", _add_data),
    "train": ("train a model and write a run directory", _add_train),
    "eval": ("loss per split of a saved run", _add_eval),
    "sample": ("generate new items from a saved run", _add_sample),
    "score": ("log-likelihood, NLL per character and perplexity of given items under a saved run", _add_score),
    "lr-find": ("sweep the learning rate over one fresh model and suggest one", _add_lr_find),
    "diagnose": ("write DIR/report.html: losses, init check, statistics and pictures", _add_diagnose),
    "gradcheck": ("check every hand-written gradient against autograd (exit 1 on a mismatch)", _add_gradcheck),
    "exercise": ("the backprop exercise: a starter file, and checks of your own gradients and layers", _add_exercise),
    "runs": ("compare run directories: options that differ, losses, wall time, loss curves", _add_runs),
    "tune": ("search model kind and sizes for a time budget (Optuna), a run directory per trial", _add_tune),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that subcommand gets its arguments (the others are listed),
    so a command's start-up pays only for the flags it has ("" builds none: `charmlp --help`)."""
    parser = Parser(
        prog="charmlp",
        description="Character-level language models (MLP, WaveNet, RNN, GRU, transformer, bigram) with "
                    "hand-written backprop checked against autograd.",
    )
    parser.add_argument("--version", action="version", version=f"charmlp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if command is None or command == name:
            add(p)
    return parser


def _given(option: str, argv: list[str]) -> bool:
    """Whether `option` is on the command line: exactly, as `--opt=value`, or abbreviated (argparse allows it)."""
    return any(tok == option or tok.startswith(option + "=")
               or (tok.startswith("--") and len(tok) > 3 and option.startswith(tok.split("=")[0])) for tok in argv)


def default_origins(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> dict[str, str]:
    """`{"--max-len": "the default", …}`: every option of `command` that the user did not give
    (under its name or an old one, `Renamed`)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    given = {a.dest for a in sub._actions if any(_given(o, argv) for o in a.option_strings)}
    return {a.option_strings[-1]: "the default" for a in sub._actions
            if a.option_strings and a.dest not in ("help", *given) and not isinstance(a, Renamed)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")  # the top level has only options
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    try:
        with value_origins(default_origins(parser, args.command, argv)) as origins:
            args.origins = origins  # run_config_from_args adds the preset's values
            args.argv = argv
            return args.func(args)
    except ReportedElsewhere:  # another rank printed the line
        return 2
    except CharmlpError as e:
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if distributed.rank() == 0:  # every rank stopped at the same step; rank 0 says so
            print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`charmlp sample RUN | head`): stop quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise again
        return 128 + 13  # SIGPIPE's number on Linux and macOS (Windows has no such signal)
    finally:
        distributed.shutdown()  # a data-parallel rank leaves its process group


if __name__ == "__main__":
    sys.exit(main())
