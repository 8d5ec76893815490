"""A big item list for the scale benchmarks: pairs of the embedded names glued together.

    python benchmarks/make_pairs.py /tmp/pairs.txt              # 1,000,000 lines, ~14 MB
    python benchmarks/make_pairs.py /tmp/pairs10m.txt --lines 10000000

Deterministic (random.Random(seed)): the same command writes the same bytes. Items run up to
30 characters (two names of at most 15); the file is not committed.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from charmlp.data import read_items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = read_items()
    rng = random.Random(args.seed)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for start in range(0, args.lines, 100_000):
            n = min(100_000, args.lines - start)
            f.write("".join(a + b + "\n" for a, b in zip(rng.choices(names, k=n), rng.choices(names, k=n), strict=True)))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
