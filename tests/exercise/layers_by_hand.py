"""Correct hand-written layers of every kind, forward and backward, in the lectures' style (charmlp's tests
plant one mistake at a time into copies of them)."""

import math

import torch


class Linear:
    def __init__(self, fan_in, fan_out, bias=True):
        self.weight = torch.randn((fan_in, fan_out)) / fan_in**0.5
        self.bias = torch.zeros(fan_out) if bias else None

    def __call__(self, x):
        self.x = x
        self.out = x @ self.weight
        if self.bias is not None:
            self.out = self.out + self.bias
        return self.out

    def backward(self, dout):
        self.weight.grad = self.x.T @ dout
        if self.bias is not None:
            self.bias.grad = dout.sum(0)
        return dout @ self.weight.T

    def parameters(self):
        return [self.weight] + ([] if self.bias is None else [self.bias])


class Embedding:
    def __init__(self, num_embeddings, embedding_dim):
        self.weight = torch.randn((num_embeddings, embedding_dim))

    def __call__(self, idx):
        self.idx = idx
        self.out = self.weight[idx]
        return self.out

    def backward(self, dout):
        dW = torch.zeros_like(self.weight)
        dW.index_add_(0, self.idx.view(-1), dout.view(-1, self.weight.shape[1]))
        self.weight.grad = dW

    def parameters(self):
        return [self.weight]


class Tanh:
    def __call__(self, x):
        self.out = torch.tanh(x)
        return self.out

    def backward(self, dout):
        return (1 - self.out**2) * dout

    def parameters(self):
        return []


class BatchNorm1d:
    def __init__(self, dim, eps=1e-5, momentum=0.1):
        self.eps, self.momentum, self.training = eps, momentum, True
        self.gamma, self.beta = torch.ones(dim), torch.zeros(dim)
        self.running_mean, self.running_var = torch.zeros(dim), torch.ones(dim)

    def __call__(self, x):
        dims = 0 if x.ndim == 2 else (0, 1)
        if self.training:
            xmean, xvar = x.mean(dims, keepdim=True), x.var(dims, keepdim=True)
        else:
            xmean, xvar = self.running_mean, self.running_var
        self.xhat = (x - xmean) / torch.sqrt(xvar + self.eps)
        self.rstd = 1 / torch.sqrt(xvar + self.eps)
        self.out = self.gamma * self.xhat + self.beta
        if self.training:
            self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * xmean.view(-1)
            self.running_var = (1 - self.momentum) * self.running_var + self.momentum * xvar.view(-1)
        return self.out

    def backward(self, dout):
        dims = 0 if dout.ndim == 2 else (0, 1)
        n = dout.numel() // dout.shape[-1]
        self.gamma.grad = (dout * self.xhat).sum(dims)
        self.beta.grad = dout.sum(dims)
        dxhat = self.gamma * dout
        return self.rstd / n * (n * dxhat - dxhat.sum(dims, keepdim=True)
                                - n / (n - 1) * self.xhat * (dxhat * self.xhat).sum(dims, keepdim=True))

    def parameters(self):
        return [self.gamma, self.beta]


class FlattenConsecutive:
    def __init__(self, n):
        self.n = n

    def __call__(self, x):
        B, T, C = x.shape
        self.in_shape = x.shape
        x = x.view(B, T // self.n, C * self.n)
        if x.shape[1] == 1:
            x = x.squeeze(1)
        self.out = x
        return self.out

    def backward(self, dout):
        return dout.view(self.in_shape)

    def parameters(self):
        return []


class LayerNorm:
    def __init__(self, dim, eps=1e-5):
        self.eps = eps
        self.gamma, self.beta = torch.ones(dim), torch.zeros(dim)

    def __call__(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        self.rstd = (var + self.eps) ** -0.5
        self.xhat = (x - mean) * self.rstd
        self.out = self.gamma * self.xhat + self.beta
        return self.out

    def backward(self, dout):
        rows = tuple(range(dout.ndim - 1))
        self.gamma.grad = (dout * self.xhat).sum(rows)
        self.beta.grad = dout.sum(rows)
        dxhat = self.gamma * dout
        return self.rstd * (dxhat - dxhat.mean(-1, keepdim=True) - self.xhat * (dxhat * self.xhat).mean(-1, keepdim=True))

    def parameters(self):
        return [self.gamma, self.beta]


class GELU:
    def __call__(self, x):
        self.x = x
        self.cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        self.out = x * self.cdf
        return self.out

    def backward(self, dout):
        pdf = torch.exp(-0.5 * self.x**2) / math.sqrt(2 * math.pi)
        return dout * (self.cdf + self.x * pdf)

    def parameters(self):
        return []


class Dropout:
    def __init__(self, p):
        self.p, self.training = p, True

    def __call__(self, x):
        if not self.training:
            self.out = x
            return x
        self.mask = (torch.rand(x.shape) >= self.p).float() / (1 - self.p)
        self.out = x * self.mask
        return self.out

    def backward(self, dout):
        return dout * self.mask

    def parameters(self):
        return []


class CrossEntropy:
    def __call__(self, logits, targets):
        self.logits, self.targets = logits, targets
        shifted = logits - logits.max(1, keepdim=True).values
        logprobs = shifted - shifted.exp().sum(1, keepdim=True).log()
        self.out = -logprobs[range(len(targets)), targets].mean()
        return self.out

    def backward(self):
        n = len(self.targets)
        dlogits = torch.softmax(self.logits, 1)
        dlogits[range(n), self.targets] -= 1
        return dlogits / n

    def parameters(self):
        return []


class RNNCell:
    def __init__(self, input_size, hidden_size):
        self.Wx = torch.randn((input_size, hidden_size)) / input_size**0.5
        self.Wh = torch.randn((hidden_size, hidden_size)) / hidden_size**0.5
        self.b = torch.zeros(hidden_size)

    def __call__(self, x, h):
        self.x, self.h = x, h
        self.out = torch.tanh(x @ self.Wx + h @ self.Wh + self.b)
        return self.out

    def backward(self, dh_new):
        da = (1 - self.out**2) * dh_new
        for p, g in ((self.Wx, self.x.T @ da), (self.Wh, self.h.T @ da), (self.b, da.sum(0))):
            p.grad = g if p.grad is None else p.grad + g
        return da @ self.Wx.T, da @ self.Wh.T

    def parameters(self):
        return [self.Wx, self.Wh, self.b]


class GRUCell:
    def __init__(self, input_size, hidden_size):
        H = self.H = hidden_size
        self.Wx = torch.randn((input_size, 3 * H)) / input_size**0.5
        self.Wh = torch.randn((H, 2 * H)) / H**0.5
        self.Wc = torch.randn((H, H)) / H**0.5
        self.b = torch.zeros(3 * H)

    def __call__(self, x, h):
        H = self.H
        self.x, self.h = x, h
        zr = torch.sigmoid(x @ self.Wx[:, : 2 * H] + h @ self.Wh + self.b[: 2 * H])
        self.z, self.r = zr[:, :H], zr[:, H:]
        self.c = torch.tanh(x @ self.Wx[:, 2 * H :] + (self.r * h) @ self.Wc + self.b[2 * H :])
        self.out = (1 - self.z) * h + self.z * self.c
        return self.out

    def backward(self, dh_new):
        x, h, z, r, c = self.x, self.h, self.z, self.r, self.c
        da_c = (1 - c**2) * dh_new * z
        drh = da_c @ self.Wc.T
        da_z = (c - h) * dh_new * z * (1 - z)
        da_r = drh * h * r * (1 - r)
        da_zr = torch.cat([da_z, da_r], 1)
        dxp = torch.cat([da_z, da_r, da_c], 1)
        dh = dh_new * (1 - z) + drh * r + da_zr @ self.Wh.T
        for p, g in ((self.Wx, x.T @ dxp), (self.Wh, h.T @ da_zr), (self.Wc, (r * h).T @ da_c), (self.b, dxp.sum(0))):
            p.grad = g if p.grad is None else p.grad + g
        return dxp @ self.Wx.T, dh

    def parameters(self):
        return [self.Wx, self.Wh, self.Wc, self.b]


class _Linear:
    def __init__(self, fan_in, fan_out):
        self.weight = torch.randn((fan_in, fan_out)) / fan_in**0.5
        self.bias = torch.zeros(fan_out)

    def __call__(self, x):
        self.x = x
        return x @ self.weight + self.bias

    def backward(self, dout):
        C = self.weight.shape[0]
        self.weight.grad = self.x.reshape(-1, C).T @ dout.reshape(-1, dout.shape[-1])
        self.bias.grad = dout.reshape(-1, dout.shape[-1]).sum(0)
        return dout @ self.weight.T


class CausalSelfAttention:
    def __init__(self, n_embd, n_head):
        self.n_head = n_head
        self.qkv = _Linear(n_embd, 3 * n_embd)
        self.proj = _Linear(n_embd, n_embd)

    def __call__(self, x):
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        self.q, self.k, self.v, self.att = q, k, v, torch.softmax(scores, -1)
        y = (self.att @ v).transpose(1, 2).reshape(B, T, C)
        self.out = self.proj(y)
        return self.out

    def backward(self, dout):
        q, k, v, att = self.q, self.k, self.v, self.att
        B, H, T, D = q.shape
        dy = self.proj.backward(dout).view(B, T, H, D).transpose(1, 2)
        datt, dv = dy @ v.transpose(-2, -1), att.transpose(-2, -1) @ dy
        dscores = att * (datt - (datt * att).sum(-1, keepdim=True))
        dq, dk = dscores @ k / math.sqrt(D), dscores.transpose(-2, -1) @ q / math.sqrt(D)
        dqkv = torch.stack([dq, dk, dv]).permute(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D)
        return self.qkv.backward(dqkv)

    def parameters(self):
        return [self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias]
