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
