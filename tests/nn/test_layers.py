import torch
import torch.nn.functional as F

from charmlp.nn import BatchNorm1d, Embedding, Flatten, Linear, Sequential, Tanh


def test_output_shapes():
    g = torch.Generator().manual_seed(0)
    emb = Embedding(27, 10)
    torch.nn.init.normal_(emb.weight, generator=g)
    net = Sequential(emb, Flatten(), Linear(30, 64, bias=False), BatchNorm1d(64), Tanh(), Linear(64, 27))
    torch.nn.init.normal_(net[2].weight, generator=g)
    torch.nn.init.normal_(net[5].weight, generator=g)
    x = torch.randint(0, 27, (32, 3), generator=g)
    assert emb(x).shape == (32, 3, 10)
    assert net(x).shape == (32, 27)
    assert net[2].bias is None and net[5].bias is not None


def test_embedding_accepts_small_integer_dtypes():
    emb = Embedding(5, 2)
    torch.nn.init.normal_(emb.weight)
    idx = torch.tensor([[0, 4], [3, 3]])
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        assert torch.equal(emb(idx.to(dtype)), emb.weight[idx])


def test_batchnorm_training_uses_batch_stats_with_bessel_correction():
    torch.manual_seed(0)
    bn = BatchNorm1d(7, momentum=0.1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(16, 7) * 3 + 2
    y = bn(x)
    mean, var = x.mean(0), x.var(0, unbiased=True)
    # F.batch_norm in eval mode fed the same (n − 1) statistics must agree
    ref = F.batch_norm(x, mean, var, bn.weight, bn.bias, training=False, eps=bn.eps)
    torch.testing.assert_close(y, ref)
    # running estimates move by momentum towards the batch statistics
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 * torch.ones(7) + 0.1 * var)


def test_batchnorm_eval_uses_running_stats():
    torch.manual_seed(1)
    bn = BatchNorm1d(5)
    bn.set_statistics(torch.randn(5), torch.rand(5) + 0.5)
    bn.eval()
    x = torch.randn(3, 5)
    ref = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    torch.testing.assert_close(bn(x), ref)
    # one example at a time gives the same rows: eval does not depend on the batch
    torch.testing.assert_close(torch.cat([bn(x[i : i + 1]) for i in range(3)]), ref)
    before = bn.running_mean.clone()
    bn(x)
    assert torch.equal(bn.running_mean, before)


def test_linear_and_tanh_forward():
    lin = Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(12.0).view(4, 3))
        lin.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    x = torch.ones(2, 4)
    torch.testing.assert_close(lin(x), x @ lin.weight + lin.bias)
    torch.testing.assert_close(Tanh()(x), torch.tanh(x))
