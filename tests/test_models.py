"""Models: the MLP VAE's shapes, initialisation, parameter groups and kernel-API densities."""

from __future__ import annotations

import pytest
import torch

import kernels
from bench.problems import datasets, models


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0, binarize="dynamic")


def test_default_architectures():
    assert models.default_architecture(64) == {"hidden": (128, 128), "z_dim": 16, "activation": "tanh"}
    assert models.default_architecture(784) == {"hidden": (200, 200), "z_dim": 50, "activation": "tanh"}


def test_mlp_vae_shapes_and_layers(digits):
    m = models.build_model(digits, seed=0)
    assert isinstance(m, models.MLPVAE) and m.likelihood == "bernoulli"
    widths = [layer.out_features for layer in m.encoder if isinstance(layer, torch.nn.Linear)]
    assert widths == [128, 128, 32]
    widths = [layer.out_features for layer in m.decoder if isinstance(layer, torch.nn.Linear)]
    assert widths == [128, 128, 64]
    assert sum(isinstance(layer, torch.nn.Tanh) for layer in m.encoder) == 2
    x = digits.train[:5]
    mu, logvar = m.encode(x)
    assert mu.shape == (5, 16) and logvar.shape == (5, 16)
    logits = m.decode(torch.zeros(3, 5, 16))
    assert logits.shape == (3, 5, 64)
    assert m.log_likelihood(x, logits).shape == (3, 5)


def test_output_bias_is_logit_of_training_mean(digits):
    m = models.build_model(digits, seed=0)
    p = digits.train_mean().clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(torch.sigmoid(m.decoder[-1].bias.detach()), p, rtol=1e-5, atol=1e-6)
    # with zero weights in the last layer the decoder outputs the training mean everywhere
    m2 = models.build_model(digits, seed=0, output_bias=False)
    assert not torch.allclose(m2.decoder[-1].bias, m.decoder[-1].bias)


def test_build_model_is_seeded_and_leaves_global_rng_alone(digits):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = models.build_model(digits, seed=1)
    after = torch.rand(1)
    b = models.build_model(digits, seed=1)
    c = models.build_model(digits, seed=2)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)


def test_parameter_groups_split_by_prefix(digits):
    m = models.build_model(digits, seed=0)
    names = [n for n, _ in m.named_parameters()]
    groups = models.encoder_decoder_split(names)
    assert groups["encoder"] and groups["decoder"]
    assert all(n.startswith("encoder.") for n in groups["encoder"])
    assert all(n.startswith("decoder.") for n in groups["decoder"])
    assert sorted(groups["encoder"] + groups["decoder"]) == sorted(names)
    assert models.encoder_decoder_split(["encoder.w", "log_s2"]) == {"encoder": ["encoder.w"], "decoder": ["log_s2"]}
    assert models.param_count(m) == sum(p.numel() for p in m.parameters())


def test_log_likelihood_matches_torch_distributions(digits):
    m = models.build_model(digits, seed=0)
    x = digits.val[:7]
    logits = m.decode(torch.randn(7, 16))
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    for backend in kernels.available_backends("cpu"):
        if backend == "triton":
            continue  # interpreter; covered by the kernel tests
        with kernels.use_backend(backend):
            torch.testing.assert_close(m.log_likelihood(x, logits), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x_dim": 0, "z_dim": 2}, "x_dim must be a positive int"),
        ({"x_dim": 4, "z_dim": 2, "hidden": (3, -1)}, "hidden must be positive ints"),
        ({"x_dim": 4, "z_dim": 2, "activation": "swish"}, "activation must be one of"),
        ({"x_dim": 4, "z_dim": 2, "output_bias": torch.ones(5) / 2}, "output_bias must have 4 entries"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.MLPVAE(**kwargs)


def test_custom_widths_and_relu(digits):
    m = models.build_model(digits, hidden=(400,), z_dim=20, activation="relu")
    assert [layer.out_features for layer in m.encoder if isinstance(layer, torch.nn.Linear)] == [400, 40]
    assert any(isinstance(layer, torch.nn.ReLU) for layer in m.decoder)
    assert "64-400-20, relu" in repr(m)


def test_ppca_dataset_gets_the_linear_gaussian_vae():
    ds = datasets.load("ppca", seed=0, binarize="dynamic")
    assert ds.likelihood == "gaussian" and ds.binarize == "none"  # real-valued data is never binarized
    m = models.build_model(ds, seed=0)
    assert isinstance(m, models.LinearGaussianVAE) and m.likelihood == "gaussian"
    mu, logvar = m.encode(ds.train[:4])
    assert mu.shape == (4, int(ds.info["k"])) and logvar.shape == mu.shape
    mean, dec_logvar = m.decode(mu)
    assert mean.shape == (4, ds.dim) and dec_logvar.shape == mean.shape
