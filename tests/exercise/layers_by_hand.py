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

