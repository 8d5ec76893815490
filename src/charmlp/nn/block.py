"""The transformer's residual pre-LayerNorm block, as one layer with its own backward."""

from __future__ import annotations

import torch

from .activations import GELU
from .attention import CausalSelfAttention
from .dropout import Dropout
from .layernorm import LayerNorm
from .linear import Linear
from .module import Layer


class MLP(Layer):
    """The block's feed-forward part: Linear(C → 4C) `fc` → GELU → Linear(4C → C) `proj`."""

    def __init__(self, n_embd: int, expand: int = 4) -> None:
        super().__init__()
        self.fc = Linear(n_embd, expand * n_embd)
        self.act = GELU()
        self.proj = Linear(expand * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act.forward_(self.fc(x)))  # fc's output is the MLP's own: GELU may overwrite it

    # chain rule through proj, GELU, fc (GELU's gradient written over proj's fresh input gradient)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return self.fc.backward(self.act.backward_(self.proj.backward(dout)))


class Block(Layer):
    """x → x + attn(ln1(x)) → x + mlp(ln2(x)): pre-LayerNorm residual block (GPT-2)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = LayerNorm(n_embd)
        self.mlp = MLP(n_embd)
        # dropout on each branch before its residual add (GPT-2's resid_pdrop); none at p = 0
        self.drop1 = Dropout(dropout) if dropout else None
        self.drop2 = Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.ln1(x))
        x = x + (a if self.drop1 is None else self.drop1(a))
        m = self.mlp(self.ln2(x))
        return x + (m if self.drop2 is None else self.drop2(m))

    # out = h + mlp(ln2(h)), h = x + attn(ln1(x))  →  dh = dout + ln2ᵀ(mlpᵀ(dout)), dx = dh + ln1ᵀ(attnᵀ(dh))
    # (each residual add passes its gradient to both branches unchanged; the branch results add up;
    # a branch's dropout passes it through its mask first: d(drop(b)) = m·dout)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        dm = dout if self.drop2 is None else self.drop2.backward(dout)
        dh = self.ln2.backward_(self.mlp.backward(dm), residual=dout)  # (into the fresh gradient mlp returns)
        da = dh if self.drop1 is None else self.drop1.backward(dh)
        return self.ln1.backward_(self.attn.backward(da), residual=dh)
