"""Command line: parses arguments and calls the same functions a notebook user calls."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import __version__
from .config import (
    DEVICES,
    ENGINES,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_preset,
)
from .data import load_dataset
from .errors import CharmlpError
from .evaluate import evaluate_run
from .sampling import DEFAULT_MAX_LEN, DEFAULT_SAMPLE_SEED, sample_run
from .train import train


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="FILE", help="UTF-8 text file, one item per line (default: the embedded names.txt)")
    p.add_argument("--block-size", type=int, default=3, metavar="K", help="characters of context (default 3)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """Model and optimisation options; unset ones come from the preset."""
    _add_data_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed",
                   help="seed: the lectures' setup (200k steps); quick: a short demo run (default seed)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps")
    p.add_argument("--batch-size", type=int, metavar="B", help="examples per minibatch (default 32)")
    p.add_argument("--n-embd", type=int, metavar="E", help="embedding size (default 10)")
    p.add_argument("--n-hidden", type=int, metavar="H", help="hidden units per layer (default 200)")
    p.add_argument("--n-layers", type=int, metavar="L", help="hidden Linear→BatchNorm→tanh blocks (default 1)")
    p.add_argument("--no-batchnorm", action="store_true", help="hidden blocks without BatchNorm (Linear → tanh)")
    p.add_argument("--lr", type=float, metavar="LR", help="learning rate (default 0.1)")
    p.add_argument("--lr-final", type=float, metavar="LR", help="learning rate after decay (default 0.01)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default step: lr → lr-final at half way)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default sgd")
    p.add_argument("--weight-decay", type=float, metavar="WD", help="default 0")
    p.add_argument("--engine", choices=ENGINES, help="who fills .grad: autograd or the hand-written backward (default autograd)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the generator that draws init and batches")
    p.add_argument("--device", choices=DEVICES, help="auto picks CUDA when available (default auto)")
    p.add_argument("--no-calibrate", action="store_true", help="keep BatchNorm's running statistics instead of calibrating over the train split")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


_TRAIN_FLAGS = {  # argparse dest → TrainConfig field
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "lr_final": "lr_final",
    "schedule": "schedule", "optimizer": "optimizer", "weight_decay": "weight_decay",
    "engine": "engine", "seed": "seed", "device": "device",
}
_MODEL_FLAGS = {"n_embd": "n_embd", "n_hidden": "n_hidden", "n_layers": "n_layers"}


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Preset first, then every flag the user set."""
    tc = apply_preset(TrainConfig(), args.preset)
    tc = dataclasses.replace(tc, **{f: getattr(args, a) for a, f in _TRAIN_FLAGS.items() if getattr(args, a) is not None})
    if args.no_calibrate:
        tc = dataclasses.replace(tc, calibrate_bn=False)
    mc = ModelConfig(batchnorm=not args.no_batchnorm)
    mc = dataclasses.replace(mc, **{f: getattr(args, a) for a, f in _MODEL_FLAGS.items() if getattr(args, a) is not None})
    return RunConfig(DataConfig(path=args.data, block_size=args.block_size), mc, tc)


def cmd_data(args: argparse.Namespace) -> int:
    info = load_dataset(DataConfig(path=args.data, block_size=args.block_size)).summary()
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    print(f"file        {info['path']}")
    print(f"vocabulary  {info['vocab_size']} characters, boundary {info['boundary']!r}: {info['vocab']}")
    print(f"block size  {info['block_size']}")
    print(f"{'split':<8}{'items':>10}{'examples':>12}")
    for s in ("train", "val", "test"):
        print(f"{s:<8}{info['items'][s]:>10}{info['examples'][s]:>12}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = run_config_from_args(args)
    result = train(cfg, out_dir=args.out, progress=not args.no_progress)
    s = result.summary
    print(
        f"step-0 loss {s['init_loss']:.4f} (ln V = {s['ln_vocab']:.4f}) | train {s['train_loss']:.4f} "
        f"| val {s['val_loss']:.4f} | test {s['test_loss']:.4f} | {s['steps']} steps in {s['seconds']:.1f} s"
    )
    print(f"run saved to {result.out_dir}; try `charmlp sample {result.out_dir}`")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    losses = evaluate_run(args.run)
    if args.json:
        print(json.dumps(losses))
    else:
        for split, loss in losses.items():
            print(f"{split:<6}{loss:.4f}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    result = sample_run(
        args.run, n=args.n, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
        prefix=args.prefix, max_len=args.max_len,
    )
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    for s in result.samples:
        print(s)
    if result.novel_fraction is not None:
        print(f"# {result.novel_fraction:.0%} of samples are not in the training file", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charmlp",
        description="Character-level MLP language models with hand-written backprop checked against autograd.",
    )
    parser.add_argument("--version", action="version", version=f"charmlp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="vocabulary and examples per split of a data file")
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="loss per split of a saved run")
    p.add_argument("run", metavar="DIR", help="run directory")
    p.add_argument("--json", action="store_true", help='print {"train": …, "val": …, "test": …}')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="generate new items from a saved run")
    p.add_argument("run", metavar="DIR", help="run directory")
    p.add_argument("-n", type=int, default=20, help="how many items (default 20)")
    p.add_argument("--seed", type=int, default=DEFAULT_SAMPLE_SEED, help="sampling seed (same seed, same items)")
    p.add_argument("--temperature", type=float, default=1.0, help="<1 sharper, >1 more varied (default 1)")
    p.add_argument("--top-k", type=int, help="sample only among the k most likely characters")
    p.add_argument("--prefix", default="", help="every sample starts with this text")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help=f"longest item, prefix included (default {DEFAULT_MAX_LEN})")
    p.add_argument("--json", action="store_true", help="print a JSON object with samples and novel_fraction")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CharmlpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
