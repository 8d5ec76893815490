"""The learner's side of the backprop exercise: a starter file, a checker that diagnoses each gradient,
a checker for hand-written layers, and the same checks as a notebook API.

    from charmlp.exercise import Backprop, check_layer
    ex = Backprop(seed=42)           # batch, parameters and every forward tensor by its exercise name
    ex.check(dlogprobs=dlogprobs)    # Report: .ok, .rows, text / HTML table
"""

from ..verdict import Report, Row
from .backprop import ATOMS, Backprop

__all__ = ["ATOMS", "Backprop", "Report", "Row", "check_file", "check_layer", "write_starter"]


def __getattr__(name: str):  # the CLI-side pieces load on first use
    if name == "check_file":
        from .runner import check_file

        return check_file
    if name == "check_layer":
        from .layers import check_layer

        return check_layer
    if name == "write_starter":
        from .starter import write_starter

        return write_starter
    raise AttributeError(name)
