"""Numba kernel of `data`: the seeded shuffle's draws (a loop over every position, each
depending on the last; apart from `data` so that reading items imports no Numba)."""

from __future__ import annotations

import numpy as np

from .jit import cached_njit


@cached_njit()
def shuffle_draws(perm: np.ndarray, i: int, raws: np.ndarray) -> int:
    """Python's `Random.shuffle` from position `i` down, on 32-bit Mersenne Twister outputs `raws`:
    j = randbelow(i + 1) by rejection (k = (i + 1).bit_length() top bits of a draw until < i + 1),
    then swap perm[i], perm[j]. Returns the position left when the draws ran out (0: done)."""
    p, nr = 0, len(raws)
    while i >= 1:
        m = i + 1
        k, t = 0, m
        while t:
            k += 1
            t >>= 1
        while True:
            if p == nr:
                return i  # the rejected draws are spent; this position starts afresh on the next ones
            r = np.int64(raws[p] >> np.uint64(32 - k))
            p += 1
            if r < m:
                break
        perm[i], perm[r] = perm[r], perm[i]
        i -= 1
    return i
