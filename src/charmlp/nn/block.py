"""The transformer's residual pre-LayerNorm block, as one layer with its own backward."""

from __future__ import annotations

import torch

from .activations import GELU
from .attention import CausalSelfAttention
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
        return self.proj(self.act(self.fc(x)))

    # chain rule through proj, GELU, fc (GELU's gradient written over proj's fresh input gradient)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return self.fc.backward(self.act.backward_(self.proj.backward(dout)))


class Block(Layer):
    """x → x + attn(ln1(x)) → x + mlp(ln2(x)): pre-LayerNorm residual block (GPT-2)."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln1 = LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    # out = h + mlp(ln2(h)), h = x + attn(ln1(x))  →  dh = dout + ln2ᵀ(mlpᵀ(dout)), dx = dh + ln1ᵀ(attnᵀ(dh))
    # (each residual add passes its gradient to both branches unchanged; the branch results add up)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        dh = self.ln2.backward(self.mlp.backward(dout), residual=dout)
        return self.ln1.backward(self.attn.backward(dh), residual=dh)
