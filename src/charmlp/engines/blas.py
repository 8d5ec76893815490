"""NumPy's OpenBLAS, found in this process: its ILP64 `cblas_sgemm` (which the compiled step
calls straight from machine code) and its thread-count setters."""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable

import numpy

# the ILP64 CBLAS sgemm of NumPy's OpenBLAS (numpy ≥ 2 wheels: scipy-openblas), by symbol name
_SGEMM_NAMES = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")
SGEMM_SYMBOL = "charmlp_cblas_sgemm64"  # the name the compiled code calls; bound to the address at import


def mapped_libraries(word: str) -> list[str]:
    """Shared libraries mapped into this process whose path contains `word` (Linux; else none)."""
    try:
        with open("/proc/self/maps") as f:
            return sorted({ln.split()[-1] for ln in f if word in ln.lower() and ".so" in ln})
    except OSError:
        return []


def first_symbol(path: str, names: tuple[str, ...]) -> ctypes._CFuncPtr | None:
    """The first of `names` that the shared library at `path` exports (None: none, or no library)."""
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    return next((fn for fn in (getattr(lib, n, None) for n in names) if fn is not None), None)


def find_sgemm() -> int | None:
    """Address of NumPy's ILP64 cblas_sgemm, or None."""
    base = os.path.dirname(numpy.__file__)
    candidates = []
    for pattern in ("*openblas*", "*blas*"):  # numpy.libs (Linux/Windows wheels), numpy/.dylibs (macOS)
        for d in (base + ".libs", os.path.join(base, ".dylibs")):
            candidates += sorted(glob.glob(os.path.join(d, pattern)))
    candidates += mapped_libraries("blas")  # and any BLAS already mapped into this process (Linux)
    for path in dict.fromkeys(candidates):
        fn = first_symbol(path, _SGEMM_NAMES)
        if fn is not None:
            return ctypes.cast(fn, ctypes.c_void_p).value
    return None


def openblas_setters() -> list[Callable[[int], None]]:
    """`openblas_set_num_threads` of every OpenBLAS loaded in this process (NumPy's own, on Linux)."""
    names = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
    setters: list[Callable[[int], None]] = []
    for path in mapped_libraries("openblas"):
        fn = first_symbol(path, names)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], None
            setters.append(fn)
    return setters
