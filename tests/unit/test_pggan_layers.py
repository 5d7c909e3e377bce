"""Progressive GAN building blocks against hand computations (numpy/scipy) and the paper's numbers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import correlate2d

from synthcxr.pggan import Discriminator, Generator
from synthcxr.pggan.layers import EqualizedConv2d, EqualizedLinear, lerp, minibatch_stddev, pixel_norm
from synthcxr.pggan.networks import n_features


def test_equalized_linear_uses_he_constant_at_runtime():
    torch.manual_seed(0)
    layer = EqualizedLinear(6, 3, gain=math.sqrt(2))
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(4, 6)
    w = layer.weight.detach().numpy()
    expect = x.numpy() @ (w * math.sqrt(2) / math.sqrt(6)).T + np.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(layer(x).detach().numpy(), expect, rtol=1e-5, atol=1e-6)
    # stored weights are N(0, 1); the scale is not baked into them
    big = EqualizedLinear(400, 300, gain=1.0)
    assert abs(big.weight.std().item() - 1.0) < 0.02 and big.scale == pytest.approx(1 / 20)


def test_equalized_conv_matches_hand_correlation():
    torch.manual_seed(1)
    conv = EqualizedConv2d(2, 3, 3, gain=1.5)
    x = torch.randn(1, 2, 5, 5)
    w = conv.weight.detach().numpy() * 1.5 / math.sqrt(2 * 9)
    xp = np.pad(x[0].numpy(), ((0, 0), (1, 1), (1, 1)))
    expect = np.stack([sum(correlate2d(xp[c], w[o, c], mode="valid") for c in range(2)) for o in range(3)])
    np.testing.assert_allclose(conv(x)[0].detach().numpy(), expect, rtol=1e-5, atol=1e-5)


def test_pixel_norm_unit_rms_per_pixel():
    x = torch.randn(3, 7, 4, 4) * 5
    y = pixel_norm(x).numpy()
    xn = x.numpy()
    expect = xn / np.sqrt((xn**2).mean(axis=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(y, expect, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt((y**2).mean(axis=1)), 1.0, rtol=1e-5)


def _hand_mbstd(x: np.ndarray, group: int) -> np.ndarray:
    n = len(x)
    g = min(group, n)
    m = -(-n // g)
    feat = np.empty(n)
    for j in range(m):
        members = [i for i in range(n) if i % m == j]
        std = np.sqrt(x[members].var(axis=0) + 1e-8)  # population variance
        feat[members] = std.mean()
    return feat


@pytest.mark.parametrize("n", [8, 4, 6, 5, 3, 1])
def test_minibatch_stddev_shape_and_value(n):
    torch.manual_seed(n)
    x = torch.randn(n, 3, 4, 4, dtype=torch.float64)
    y = minibatch_stddev(x, group_size=4)
    assert y.shape == (n, 4, 4, 4)
    assert torch.equal(y[:, :3], x)
    feat = y[:, 3].numpy()
    assert np.allclose(feat, feat[:, :1, :1])  # constant over the map
    np.testing.assert_allclose(feat[:, 0, 0], _hand_mbstd(x.numpy(), 4), rtol=1e-10)


def test_minibatch_stddev_strided_groups_match_reference_layout():
    # N=8, G=4 -> 2 groups {0,2,4,6} and {1,3,5,7}; make group 1 constant so its stddev is ~0
    x = torch.zeros(8, 1, 4, 4)
    x[0::2] = torch.arange(4.0).view(4, 1, 1, 1)
    y = minibatch_stddev(x)[:, 1, 0, 0]
    assert torch.allclose(y[0::2], torch.full((4,), float(np.std([0, 1, 2, 3]))), atol=1e-6)
    assert torch.allclose(y[1::2], torch.full((4,), 1e-4), atol=1e-6)


def test_feature_counts_and_paper_parameter_count():
    assert [n_features(s, 8192, 512) for s in range(1, 10)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    G = Generator(1024, 512, 8192, 512)
    D = Discriminator(1024, 8192, 512)
    # Karras et al. 2018, Table 2: 23.1M parameters each (RGB; ours is grayscale, a few hundred fewer)
    for net in (G, D):
        assert abs(sum(p.numel() for p in net.parameters()) - 23.1e6) < 0.01 * 23.1e6


def test_lerp_endpoints_exact():
    a, b = torch.randn(5), torch.randn(5)
    assert torch.equal(lerp(a, b, 0.0), a) and torch.equal(lerp(a, b, 1.0), b)
    assert torch.allclose(lerp(a, b, 0.25), 0.75 * a + 0.25 * b)


def test_generator_fade_in_blends_upsampled_previous_path():
    torch.manual_seed(0)
    G = Generator(16, latent_dim=8, fmap_base=64, fmap_max=16).eval()
    z = torch.randn(3, 8)
    with torch.no_grad():
        at8 = G(z, res=8)
        low = G(z, res=4)
        new = G.to_rgb[1](G.blocks[1](G.blocks[0](z)))
        fade0 = G(z, res=8, alpha=0.0)
        fade1 = G(z, res=8, alpha=1.0)
        fade = G(z, res=8, alpha=0.3)
    up = F.interpolate(low, scale_factor=2, mode="nearest")
    assert torch.allclose(fade0, up, atol=1e-6)
    assert torch.equal(fade1, at8) and torch.allclose(at8, new, atol=1e-6)
    assert torch.allclose(fade, 0.7 * up + 0.3 * new, atol=1e-5)
    assert G(z).shape == (3, 1, 16, 16)


def test_discriminator_fade_in_blends_downsampled_previous_path():
    torch.manual_seed(0)
    D = Discriminator(16, fmap_base=64, fmap_max=16).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        d0 = D(x, res=8, alpha=0.0)
        d_low = D(F.avg_pool2d(x, 2), res=4)
        d1 = D(x, res=8, alpha=1.0)
        act = torch.nn.LeakyReLU(0.2)
        h_new = D.blocks[1](act(D.from_rgb[1](x)))
        h_old = act(D.from_rgb[0](F.avg_pool2d(x, 2)))
        d_half = D(x, res=8, alpha=0.5)
        d_half_hand = D.blocks[0](0.5 * h_old + 0.5 * h_new)
    assert torch.allclose(d0, d_low, atol=1e-6)
    assert torch.allclose(d1, D.blocks[0](h_new), atol=1e-6)
    assert torch.allclose(d_half, d_half_hand, atol=1e-5)
    assert d1.shape == (4, 1)
    with pytest.raises(ValueError, match="expected"):
        D(x, res=16)
