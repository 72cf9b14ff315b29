"""Networks: exact parameter counts of the paper configurations, initialisation, shapes and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medfusion_jax.models import VAE, VAEGAN, Discriminator, UNet
from medfusion_jax.models.vae import kl_divergence


def n_params(factory) -> int:
    model = nnx.eval_shape(factory)  # allocates nothing, so the 194M-parameter UNet is cheap to count
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# Spec section 12 (instantiated PyTorch reference), every row.
@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(in_channels=3, out_channels=3, emb_channels=4, deep_supervision=1), 13_307_542),
        (dict(in_channels=3, out_channels=3, emb_channels=4), 13_307_155),
        (dict(in_channels=3, out_channels=3, emb_channels=8, deep_supervision=1), 13_365_094),
        (dict(in_channels=3, out_channels=3, emb_channels=8), 13_364_707),
        (dict(in_channels=1, out_channels=1, emb_channels=4, deep_supervision=1), 13_305_874),
        (dict(in_channels=1, out_channels=1, emb_channels=8, deep_supervision=1), 13_363_426),
    ],
)
def test_vae_parameter_count(kwargs, expected):
    assert n_params(lambda: VAE(**kwargs, rngs=nnx.Rngs(0))) == expected


def test_vae_parameter_count_by_child():
    vae = nnx.eval_shape(lambda: VAE(emb_channels=8, deep_supervision=1, rngs=nnx.Rngs(0)))
    count = lambda m: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert {name: count(getattr(vae, name)) for name in
            ("inc", "encoders", "out_enc", "inc_dec", "decoders", "outc", "outc_ver")} == {
        "inc": 39_232, "encoders": 7_747_712, "out_enc": 74_016, "inc_dec": 2_403_840,
        "decoders": 3_099_712, "outc": 195, "outc_ver": 387}


@pytest.mark.parametrize("in_channels, expected", [(3, 1_557_505), (1, 1_556_353)])
def test_discriminator_parameter_count(in_channels, expected):
    assert n_params(lambda: Discriminator(in_channels, rngs=nnx.Rngs(0))) == expected


def test_vaegan_discriminators_parameter_count():
    def pair():
        vae = VAE(emb_channels=4, deep_supervision=1, rngs=nnx.Rngs(0))
        return VAEGAN(vae, [Discriminator(3, rngs=nnx.Rngs(1)) for _ in range(2)])
    model = nnx.eval_shape(pair)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model.discriminator, nnx.Param))) == 3_115_010


@pytest.mark.parametrize("channels, expected, by_child", [
    (8, 194_352_904, {"in_conv": 18_688, "outc": 2_056}),
    (4, 194_342_660, {"in_conv": 9_472, "outc": 1_028}),
])
def test_unet_parameter_count(channels, expected, by_child):
    assert n_params(lambda: UNet(channels, channels, num_classes=2, rngs=nnx.Rngs(0))) == expected
    unet = nnx.eval_shape(lambda: UNet(channels, channels, num_classes=2, rngs=nnx.Rngs(0)))
    count = lambda m: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert {name: count(getattr(unet, name)) for name in by_child} == by_child
    assert count(unet.time_embedder) == 1_312_768 and count(unet.cond_embedder) == 2_048
    assert (count(unet.in_blocks), count(unet.middle_block), count(unet.out_blocks)) == (
        50_948_864, 39_860_224, 102_208_256)


SMALL_VAE = dict(in_channels=3, out_channels=3, emb_channels=4, hid_chs=(16, 32, 64, 64), deep_supervision=1)
SMALL_UNET = dict(in_ch=4, out_ch=4, hid_chs=(32, 32, 64, 64), time_emb_dim=64, num_classes=2)


def test_fresh_models_start_like_the_reference():
    """Zero-initialised output convs: a fresh VAE decodes to exactly 0 and a fresh UNet predicts 0."""
    vae = VAE(**SMALL_VAE, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    out, heads, kl = vae(x, key=jax.random.key(2))
    assert float(jnp.abs(out).max()) == 0.0 and float(jnp.abs(heads[0]).max()) == 0.0
    assert float(kl) > 0
    unet = UNet(**SMALL_UNET, rngs=nnx.Rngs(0))
    eps = unet(jnp.ones((2, 8, 8, 4)), jnp.array([3, 900]), jnp.array([0, 1]))
    assert eps.shape == (2, 8, 8, 4) and float(jnp.abs(eps).max()) == 0.0
    # The second conv of every residual block starts at zero, the first does not.
    block = unet.in_blocks[0]
    assert float(jnp.abs(block.block_seq[1].basic_block.conv.kernel[...]).max()) == 0.0
    first = block.block_seq[0].basic_block.conv.kernel[...]
    bound = 1 / np.sqrt(3 * 3 * 32)  # PyTorch default: U(+-1/sqrt(fan_in))
    assert 0.9 * bound < float(jnp.abs(first).max()) <= bound
    assert float(jnp.std(unet.cond_embedder.embedding.embedding[...])) > 0.5  # N(0, 1) embedding


def test_vae_shapes_and_encode_variants():
    vae = VAE(**SMALL_VAE, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    mean, logvar = vae.posterior(x)
    assert mean.shape == (2, 4, 4, 4) and float(logvar.min()) >= -30 and float(logvar.max()) <= 20
    z1, z2 = vae.encode(x, key=jax.random.key(0)), vae.encode(x, key=jax.random.key(1))
    assert not np.allclose(z1, z2)  # encode samples, like the reference
    np.testing.assert_array_equal(vae.encode(x, noise=jnp.zeros_like(mean)), vae.encode_mean(x))
    assert vae.decode(mean).shape == (2, 32, 32, 3)
    expected_kl = 0.5 * np.sum(np.square(mean) + np.exp(logvar) - 1 - logvar) / 2
    np.testing.assert_allclose(kl_divergence(mean, logvar), expected_kl, rtol=1e-5)


def test_deep_supervision_true_gives_one_head_per_decoder():
    vae = VAE(**{**SMALL_VAE, "deep_supervision": True}, rngs=nnx.Rngs(0))
    _, heads, _ = vae(jnp.zeros((1, 32, 32, 3)), noise=jnp.zeros((1, 4, 4, 4)))
    assert [h.shape for h in heads] == [(1, 16, 16, 3), (1, 8, 8, 3), (1, 4, 4, 3)]


@pytest.mark.parametrize("shape, message", [
    ((1, 32, 32, 1), "expected 3 channels"),
    ((1, 36, 32, 3), "divisible by 8"),
    ((32, 32, 3), "4-D NHWC"),
])
def test_vae_rejects_wrong_inputs(shape, message):
    vae = VAE(**SMALL_VAE, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=message):
        vae(jnp.zeros(shape), noise=jnp.zeros((1, 4, 4, 4)))


def test_unet_and_discriminator_reject_wrong_inputs():
    unet = UNet(**SMALL_UNET, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="expected 4 channels"):
        unet(jnp.zeros((1, 8, 8, 3)), jnp.array([1]))
    with pytest.raises(ValueError, match="divisible by 4"):
        unet(jnp.zeros((1, 10, 8, 4)), jnp.array([1]))
    disc = Discriminator(3, (16, 32, 64, 64), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 8"):
        disc(jnp.zeros((1, 20, 20, 3)))
    with pytest.raises(ValueError, match="num_classes=None"):
        UNet(**{**SMALL_UNET, "num_classes": None}, rngs=nnx.Rngs(0))(
            jnp.zeros((1, 8, 8, 4)), jnp.array([1]), jnp.array([0]))


def test_condition_mask_equals_separate_passes():
    unet = UNet(**SMALL_UNET, rngs=nnx.Rngs(0))
    # Make the output layer non-zero so the comparison means something.
    unet.outc.conv.kernel[...] = jax.random.normal(jax.random.key(3), unet.outc.conv.kernel.shape)
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 4))
    t, labels = jnp.array([10, 500]), jnp.array([1, 0])
    mixed = unet(x, t, labels, jnp.array([True, False]))
    np.testing.assert_allclose(mixed[:1], unet(x[:1], t[:1], labels[:1]), atol=1e-5)
    np.testing.assert_allclose(mixed[1:], unet(x[1:], t[1:], None), atol=1e-5)
    assert not np.allclose(unet(x[1:], t[1:], labels[1:]), unet(x[1:], t[1:], None), atol=1e-4)


# -- volumes (spatial_dims=3): the same networks, one code path ------------------------------------------

@pytest.mark.parametrize("golden", ["vae3d_a", "disc3d_a", "unet3d_a"])
def test_3d_parameter_count_equals_the_pytorch_reference(golden):
    """n_params recorded by the PyTorch original (goldens' config.json) for its 3-D networks."""
    import json

    from medfusion_jax.convert.reference import build_from_reference
    from tests.conftest import GOLDENS
    config = json.loads((GOLDENS / golden / "config.json").read_text())
    model = nnx.eval_shape(lambda: build_from_reference(config["class"], config["ctor_kwargs"]))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == config["n_params"]


@pytest.mark.parametrize("factory", [
    lambda d: VAE(in_channels=1, out_channels=1, emb_channels=8, deep_supervision=1, spatial_dims=d, rngs=nnx.Rngs(0)),
    lambda d: Discriminator(1, spatial_dims=d, rngs=nnx.Rngs(0)),
    lambda d: UNet(8, 8, num_classes=2, spatial_dims=d, rngs=nnx.Rngs(0)),
])
def test_paper_size_3d_networks_have_the_2d_keys_with_one_more_kernel_axis(factory):
    """The paper's configurations built for volumes: every PyTorch key of the 2-D network, each conv kernel
    [o, i, k, k] becoming [o, i, k, k, k] and nothing else changing; the exact count follows."""
    from medfusion_jax.convert.state_dict import torch_keys
    keys2, keys3 = torch_keys(nnx.eval_shape(lambda: factory(2))), torch_keys(nnx.eval_shape(lambda: factory(3)))
    assert keys2.keys() == keys3.keys()
    expected = {k: s + s[-1:] if len(s) == 4 else s for k, s in keys2.items()}
    assert keys3 == expected
    assert sum(int(np.prod(s)) for s in keys3.values()) == n_params(lambda: factory(3))


def _abstract_call(abstract_model, fn, *shapes):
    """``fn(model, *inputs)`` evaluated abstractly: shapes only, nothing allocated or compiled."""
    graphdef, state = nnx.split(abstract_model)
    inputs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return jax.eval_shape(lambda state, *xs: fn(nnx.merge(graphdef, state), *xs), state, *inputs)


def test_3d_shapes_and_input_checks():
    """Shapes by abstract evaluation (the computation itself is checked against the 3-D goldens)."""
    vae = nnx.eval_shape(lambda: VAE(1, 1, 4, (8, 8, 16), (3, 3, 3), (1, 2, 2), deep_supervision=1, spatial_dims=3,
                                     rngs=nnx.Rngs(0)))
    forward = lambda m, x: m(x, key=jax.random.key(2))  # noqa: E731
    out, heads, _ = _abstract_call(vae, forward, (2, 8, 12, 16, 1))
    assert out.shape == (2, 8, 12, 16, 1) and heads[0].shape == (2, 4, 6, 8, 1)
    assert _abstract_call(vae, lambda m, x: m.encode_mean(x), (2, 8, 12, 16, 1)).shape == (2, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="5-D NDHWC batch"):
        _abstract_call(vae, forward, (1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"divisible by 4 \(the total downsampling\), got 8x10x8"):
        _abstract_call(vae, forward, (1, 8, 10, 8, 1))
    unet = nnx.eval_shape(lambda: UNet(4, 4, (16, 16, 32), (3, 3, 3), (1, 2, 2), norm_groups=8, time_emb_dim=32,
                                       spatial_dims=3, rngs=nnx.Rngs(0)))
    pred = _abstract_call(unet, lambda m, x: m(x, jnp.array([1, 500]), jnp.array([0, 1])), (2, 4, 4, 4, 4))
    assert pred.shape == (2, 4, 4, 4, 4)
