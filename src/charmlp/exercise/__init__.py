"""The learner's side of the backprop exercise: a starter file, a checker that diagnoses each gradient,
a checker for hand-written layers, and the same checks as a notebook API.

    from charmlp.exercise import Backprop, check_layer
    ex = Backprop(seed=42)           # batch, parameters and every forward tensor by its exercise name
    ex.check(dlogprobs=dlogprobs)    # Report: .ok, .rows, text / HTML table
    RNNBackprop().check(dh2=dh2)     # likewise WaveNetBackprop, GRUBackprop, TransformerBackprop
"""

from ..verdict import Report, Row
from .backprop import ATOMS, Backprop
from .exercises import GRUBackprop, RNNBackprop, TransformerBackprop, WaveNetBackprop

__all__ = ["ATOMS", "Backprop", "GRUBackprop", "RNNBackprop", "Report", "Row", "TransformerBackprop", "WaveNetBackprop",
           "check_file", "check_layer", "write_starter"]


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
