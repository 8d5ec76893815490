import math

import pytest
import torch

from charmlp.data import load_dataset
from charmlp.errors import CharmlpError
from charmlp.models import MLPConfig, build_model, num_params
from charmlp.nn import BatchNorm1d, Linear, Tanh, cross_entropy


def test_layer_stack_and_parameter_count():
    model = build_model(MLPConfig(n_layer=1), seed=0)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Embedding", "Flatten", "Linear", "BatchNorm1d", "Tanh", "Linear"]
    # C 27·10 + W1 30·200 (no bias before BN) + γ, β 2·200 + W2 200·27 + b2 27
    assert num_params(model) == 270 + 6000 + 400 + 5400 + 27


def test_deep_model_and_no_batchnorm_variant():
    deep = build_model(MLPConfig(n_layer=5, n_hidden=100), seed=0)
    assert sum(isinstance(m, BatchNorm1d) for m in deep.layers) == 5
    assert sum(isinstance(m, Tanh) for m in deep.layers) == 5
    plain = build_model(MLPConfig(n_layer=2, batchnorm=False), seed=0)
    linears = [m for m in plain.layers if isinstance(m, Linear)]
    assert all(m.bias is not None for m in linears) and not plain.batchnorms()


def test_kaiming_init_scale():
    model = build_model(MLPConfig(n_hidden=2000), seed=0)
    w1 = model.layers[2].weight
    assert abs(w1.std().item() - (5 / 3) / math.sqrt(30)) < 0.01


@pytest.mark.parametrize("n_layers", [1, 5])
def test_untrained_loss_is_near_ln_vocab(n_layers):
    ds = load_dataset()
    model = build_model(MLPConfig(n_layer=n_layers), seed=1)
    with torch.no_grad():
        loss = cross_entropy(model(ds.X["val"][:4096]), ds.Y["val"][:4096]).item()
    assert abs(loss - math.log(27)) < 0.05


def test_same_seed_same_weights():
    a, b = build_model(MLPConfig(), seed=3), build_model(MLPConfig(), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bad_sizes_are_user_errors():
    with pytest.raises(CharmlpError, match="--n-hidden"):
        build_model(MLPConfig(n_hidden=0))
    with pytest.raises(CharmlpError, match="--block-size"):
        build_model(MLPConfig(block_size=-1))
