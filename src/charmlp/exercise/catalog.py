"""The layer kinds `charmlp exercise check-layer --layer K` knows: each one's constructor (the same
arguments as charmlp's own class), the attributes the checker reads, and a ready-to-fill template
(`charmlp exercise init --layer K`). Imports nothing heavy: `--help` lists these without torch.
"""

from __future__ import annotations

# kind → (charmlp's class and its constructor, what the check builds and feeds, the attributes it reads)
KINDS: dict[str, tuple[str, str, str]] = {
    "linear": ("Linear(fan_in, fan_out, bias=True)", "Linear(30, 20); x (B, 30) at B = 32 and 13",
               "weight (fan_in, fan_out) or W; bias (fan_out,) or b"),
    "embedding": ("Embedding(num_embeddings, embedding_dim)", "Embedding(27, 10); ids (32, 3) and (13, 8), repeats included",
                  "weight (num_embeddings, embedding_dim)"),
    "tanh": ("Tanh()", "x (32, 20) and (13, 20)", "(no parameters)"),
    "batchnorm1d": ("BatchNorm1d(dim, eps=1e-5, momentum=0.1)", "BatchNorm1d(20); x (32, 20), (13, 20) and (5, 3, 20) "
                    "(statistics over B and T)", "gamma or weight, beta or bias (dim,); running_mean, running_var; training"),
    "flatten_consecutive": ("FlattenConsecutive(n)", "FlattenConsecutive(2); x (32, 8, 10), (13, 6, 10) and (7, 2, 10)",
                            "(no parameters)"),
    "layernorm": ("LayerNorm(dim, eps=1e-5)", "LayerNorm(20); x (32, 20) and (13, 5, 20)",
                  "gamma or weight, beta or bias (dim,)"),
    "gelu": ("GELU()", "x (32, 20) and (13, 20); the exact GELU x·Φ(x) (erf), not the tanh approximation", "(no parameters)"),
    "dropout": ("Dropout(p)", "Dropout(0.2); x (32, 20) and (13, 20), in training and eval mode; the mask is read back "
                "from the output (out / x)", "training"),
    "cross_entropy": ("CrossEntropy()", "logits (32, 27) and (13, 27) with large logits, targets (B,); "
                      "loss = layer(logits, targets), dlogits = layer.backward()", "(no parameters)"),
    "rnn_cell": ("RNNCell(input_size, hidden_size)", "RNNCell(10, 16); h' = layer(x, h) with x (32, 10), h (32, 16); "
                 "then 3 steps at B = 13, each forward followed by its backward, in reverse",
                 "Wx (input_size, hidden), Wh (hidden, hidden), b (hidden,)"),
    "gru_cell": ("GRUCell(input_size, hidden_size)", "GRUCell(10, 16); as rnn_cell", "Wx (input_size, 3·hidden: z, r, c), "
                 "Wh (hidden, 2·hidden: z, r), Wc (hidden, hidden), b (3·hidden,)"),
    "causal_self_attention": ("CausalSelfAttention(n_embd, n_head)", "CausalSelfAttention(24, 2); x (32, 5, 24) and (13, 7, 24)",
                              "qkv.weight (n_embd, 3·n_embd: q | k | v, each n_head heads of n_embd/n_head), qkv.bias, "
                              "proj.weight (n_embd, n_embd), proj.bias"),
}

CLASS_NAMES = {"linear": "Linear", "embedding": "Embedding", "tanh": "Tanh", "batchnorm1d": "BatchNorm1d",
               "flatten_consecutive": "FlattenConsecutive", "layernorm": "LayerNorm", "gelu": "GELU", "dropout": "Dropout",
               "cross_entropy": "CrossEntropy", "rnn_cell": "RNNCell", "gru_cell": "GRUCell",
               "causal_self_attention": "CausalSelfAttention"}


def help_epilog() -> str:
    """`check-layer --help`'s list: per kind, the constructor your class must take."""
    return "layer kinds (your class takes the same constructor arguments as charmlp's):\n" + "\n".join(
        f"  {k:<22} {sig}" for k, (sig, _, _) in KINDS.items())


_HEAD = '''"""{cls} by hand, checked by charmlp:

    charmlp exercise check-layer {name}:{cls} --layer {kind}

{what}. charmlp builds your class as {sig}, sets its parameters to
seeded values, runs it on several input shapes and seeds, and compares the output, the value
backward(dout) returns and every parameter's .grad with autograd through its own {cls}.
backward leaves each parameter's gradient in its .grad (set it, or add to it when it is not None).
A value still None counts as not written yet.
"""

import torch
'''

_BODY = {
    "linear": ("y = x @ weight + bias over the last dimension; x is (B, fan_in)", '''
class Linear:
    def __init__(self, fan_in, fan_out, bias=True):
        self.weight = torch.randn((fan_in, fan_out)) / fan_in**0.5
        self.bias = torch.zeros(fan_out) if bias else None

    def __call__(self, x):
        self.x = x
        self.out = None  # your forward
        return self.out

    def backward(self, dout):
        self.weight.grad = None  # dL/dweight
        if self.bias is not None:
            self.bias.grad = None  # dL/dbias
        return None  # dL/dx

    def parameters(self):
        return [self.weight] + ([] if self.bias is None else [self.bias])
'''),
    "embedding": ("out = weight[idx]: ids (B, T) -> vectors (B, T, embedding_dim); a repeated id's rows add up", '''
class Embedding:
    def __init__(self, num_embeddings, embedding_dim):
        self.weight = torch.randn((num_embeddings, embedding_dim))

    def __call__(self, idx):
        self.idx = idx
        self.out = None  # your forward
        return self.out

    def backward(self, dout):
        self.weight.grad = None  # dL/dweight
        return None  # ids have no gradient

    def parameters(self):
        return [self.weight]
'''),
    "tanh": ("out = tanh(x), elementwise", '''
class Tanh:
    def __call__(self, x):
        self.out = None  # your forward
        return self.out

    def backward(self, dout):
        return None  # dL/dx

    def parameters(self):
        return []
'''),
    "batchnorm1d": ("BatchNorm over every dimension but the last, as the lectures: training uses the batch mean and "
                    "the variance with n - 1 and moves the running statistics by momentum; eval uses them", '''
class BatchNorm1d:
    def __init__(self, dim, eps=1e-5, momentum=0.1):
        self.eps, self.momentum, self.training = eps, momentum, True
        self.gamma, self.beta = torch.ones(dim), torch.zeros(dim)
        self.running_mean, self.running_var = torch.zeros(dim), torch.ones(dim)

    def __call__(self, x):
        dims = 0 if x.ndim == 2 else (0, 1)  # (B, C) or (B, T, C): statistics over B (and T)
        self.out = None  # your forward (and, in training, the running statistics)
        return self.out

    def backward(self, dout):  # training mode
        self.gamma.grad = None  # dL/dgamma
        self.beta.grad = None  # dL/dbeta
        return None  # dL/dx

    def parameters(self):
        return [self.gamma, self.beta]
'''),
    "flatten_consecutive": ("(B, T, C) -> (B, T // n, n * C): fuse each n neighbouring positions; a length-1 time "
                            "dimension is dropped", '''
class FlattenConsecutive:
    def __init__(self, n):
        self.n = n

    def __call__(self, x):
        self.out = None  # your forward
        return self.out

    def backward(self, dout):
        return None  # dL/dx

    def parameters(self):
        return []
'''),
    "layernorm": ("LayerNorm over the last dimension of each row, biased variance (1/C), the same in training and eval",
                  '''
class LayerNorm:
    def __init__(self, dim, eps=1e-5):
        self.eps = eps
        self.gamma, self.beta = torch.ones(dim), torch.zeros(dim)

    def __call__(self, x):
        self.out = None  # your forward
        return self.out

    def backward(self, dout):
        self.gamma.grad = None  # dL/dgamma
        self.beta.grad = None  # dL/dbeta
        return None  # dL/dx

    def parameters(self):
        return [self.gamma, self.beta]
'''),
    "gelu": ("out = x * Phi(x), Phi the standard normal CDF: 0.5 * (1 + erf(x / sqrt(2))) (the exact GELU, "
             "torch.nn.functional.gelu's default)", '''
class GELU:
    def __call__(self, x):
        self.x = x
        self.out = None  # your forward
        return self.out

    def backward(self, dout):
        return None  # dL/dx

    def parameters(self):
        return []
'''),
    "dropout": ("inverted dropout: in training each entry is zeroed with probability p and the kept ones are scaled by "
                "1 / (1 - p); in eval mode out = x", '''
class Dropout:
    def __init__(self, p):
        self.p, self.training = p, True

    def __call__(self, x):
        self.out = None  # your forward (draw the mask with torch.rand, keep it for backward)
        return self.out

    def backward(self, dout):
        return None  # dL/dx, with the mask the forward drew

    def parameters(self):
        return []
'''),
    "cross_entropy": ("loss = mean over the rows of -log softmax(logits)[target]; backward() returns dL/dlogits", '''
class CrossEntropy:
    def __call__(self, logits, targets):
        self.logits, self.targets = logits, targets
        self.out = None  # your forward: the mean loss, a 0-d tensor
        return self.out

    def backward(self):
        return None  # dL/dlogits, in one expression

    def parameters(self):
        return []
'''),
    "rnn_cell": ("one step of the Elman RNN: h' = tanh(x @ Wx + h @ Wh + b); backward(dh') returns (dx, dh); "
                 "the weights' gradients add up over the steps of a sequence", '''
class RNNCell:
    def __init__(self, input_size, hidden_size):
        self.Wx = torch.randn((input_size, hidden_size)) / input_size**0.5
        self.Wh = torch.randn((hidden_size, hidden_size)) / hidden_size**0.5
        self.b = torch.zeros(hidden_size)

    def __call__(self, x, h):
        self.x, self.h = x, h
        self.out = None  # your forward: h'
        return self.out

    def backward(self, dh_new):
        # add this step's share to each .grad (a sequence calls backward once per step)
        self.Wx.grad = None
        self.Wh.grad = None
        self.b.grad = None
        return None, None  # (dL/dx, dL/dh)

    def parameters(self):
        return [self.Wx, self.Wh, self.b]
'''),
    "gru_cell": ("one step of the GRU (makemore's form): z = sigmoid(x @ Wx_z + h @ Wh_z + b_z), "
                 "r = sigmoid(x @ Wx_r + h @ Wh_r + b_r), c = tanh(x @ Wx_c + (r * h) @ Wc + b_c), "
                 "h' = (1 - z) * h + z * c; Wx, b hold the z, r, c blocks side by side, Wh the z and r blocks", '''
class GRUCell:
    def __init__(self, input_size, hidden_size):
        H = hidden_size
        self.Wx = torch.randn((input_size, 3 * H)) / input_size**0.5
        self.Wh = torch.randn((H, 2 * H)) / H**0.5
        self.Wc = torch.randn((H, H)) / H**0.5
        self.b = torch.zeros(3 * H)

    def __call__(self, x, h):
        self.x, self.h = x, h
        self.out = None  # your forward: h'
        return self.out

    def backward(self, dh_new):
        # add this step's share to each .grad (a sequence calls backward once per step)
        self.Wx.grad = self.Wh.grad = self.Wc.grad = self.b.grad = None
        return None, None  # (dL/dx, dL/dh)

    def parameters(self):
        return [self.Wx, self.Wh, self.Wc, self.b]
'''),
    "causal_self_attention": ("causal multi-head self-attention as nanoGPT's: qkv = x @ W + b split into q | k | v, "
                              "each into n_head heads of D = n_embd / n_head; att = softmax(q k^T / sqrt(D)) with "
                              "position t seeing 0..t; y = att v, heads merged, out = y @ proj.weight + proj.bias", '''
class Linear:  # y = x @ weight + bias, for (B, T, C) inputs too
    def __init__(self, fan_in, fan_out):
        self.weight = torch.randn((fan_in, fan_out)) / fan_in**0.5
        self.bias = torch.zeros(fan_out)


class CausalSelfAttention:
    def __init__(self, n_embd, n_head):
        self.n_head = n_head
        self.qkv = Linear(n_embd, 3 * n_embd)
        self.proj = Linear(n_embd, n_embd)

    def __call__(self, x):
        B, T, C = x.shape
        self.x = x
        self.out = None  # your forward
        return self.out

    def backward(self, dout):
        self.qkv.weight.grad = self.qkv.bias.grad = None
        self.proj.weight.grad = self.proj.bias.grad = None
        return None  # dL/dx

    def parameters(self):
        return [self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias]
'''),
}


def template(kind: str, name: str = "layer.py") -> str:
    """The ready-to-fill file for `kind` (`charmlp exercise init --layer K --out NAME`)."""
    what, body = _BODY[kind]
    cls = CLASS_NAMES[kind]
    return _HEAD.format(cls=cls, name=name, kind=kind, what=what[0].upper() + what[1:], sig=KINDS[kind][0]) + "\n" + body
