"""Sequential: layers applied in order, backward in reverse."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .module import Layer


class Sequential(Layer):
    """Layers applied in order; backward walks them in reverse."""

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.keep_grads = False  # diagnostics: keep each layer's output gradient as `layer.grad_out`

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.infer(x)
        return x

    # chain rule: feed each layer's input gradient to the layer before it
    def backward(self, dout: torch.Tensor) -> torch.Tensor | None:
        for layer in reversed(self.layers):
            if self.keep_grads:
                layer.grad_out = dout  # dL/d(this layer's output)
            dout = layer.backward(dout)
        return dout
