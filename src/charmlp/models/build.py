"""Building a model from its configuration, and counting and size-checking it first.

Above `network` (which imports torch): these functions import it only when called, so validating
a configuration's sizes stays torch-free up to the parameter count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ModelConfig
from ..errors import CharmlpError
from .base import MAX_PARAMS
from .registry import model_config, spec_of

if TYPE_CHECKING:
    import torch

    from .network import LanguageModel


def count_params(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` describes, without allocating it (built on the meta device)."""
    import torch

    from .network import LanguageModel

    with torch.device("meta"):
        return num_params(LanguageModel(cfg))


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise a user error for sizes that are zero, negative or absurd, or a model too large
    (counting the parameters imports torch; the checks before it do not)."""
    spec_of(cfg)
    cfg.validate()
    n = count_params(cfg)
    if n > MAX_PARAMS:
        raise CharmlpError(
            f"this model would have {n:,} parameters ({4 * n / 2**30:.1f} GiB), more than the {MAX_PARAMS:,} "
            "charmlp allows; lower its width or depth (--n-hidden, --n-layer, --n-embd)"
        )


def build_model(cfg: ModelConfig | None = None, generator: torch.Generator | None = None,
                seed: int | None = None) -> LanguageModel:
    """Build and initialise the model `cfg` describes (default: the MLP); pass a `generator`
    (or a `seed`) for reproducibility."""
    import torch

    from .network import LanguageModel

    cfg = cfg if cfg is not None else model_config()
    validate_model_config(cfg)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    model = LanguageModel(cfg)
    model.init_weights(generator)
    return model
