"""--cache-latents: encoding the data once, reusing the cache, and the cache's checkpointable loader."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from medfusion_jax.config import DataConfig, DiffusionConfig, RunConfig
from medfusion_jax.data import make_dataset, normalize
from medfusion_jax.mesh import make_mesh
from medfusion_jax.models import VAE
from medfusion_jax.run_folder import build, split_params
from medfusion_jax.training.diffusion_task import DiffusionSpec, clean_latents
from medfusion_jax.training.latent_cache import LatentLoader, encode_source, load_or_build


@pytest.fixture(scope="module")
def vae():
    return split_params(build(VAE, dict(hid_chs=(8, 16, 16), kernel_sizes=(3, 3, 3), strides=(1, 2, 2),
                                        emb_channels=4)))


def test_encoding_gives_the_posterior_of_every_image(vae, tmp_path):
    graph, params = vae
    source = make_dataset("phantom-histo", image_size=16, num_examples=10)
    built = []

    def encode():
        built.append(1)
        return encode_source(source, graph, params, make_mesh(), batch_size=4)  # 3 batches, the last padded

    arrays = load_or_build(tmp_path, {"images": 10}, encode)
    images = normalize(np.stack([source[i]["image"] for i in range(10)]))
    mean, logvar = jax.jit(lambda x: nnx.merge(graph, params).posterior(x))(images)
    np.testing.assert_allclose(arrays["mean"], np.asarray(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["logvar"], np.asarray(logvar), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(arrays["label"], [source[i]["label"] for i in range(10)])

    again = load_or_build(tmp_path, {"images": 10}, encode)
    assert len(built) == 1
    np.testing.assert_array_equal(again["mean"], arrays["mean"])
    load_or_build(tmp_path, {"images": 10, "autoencoder_step": 2}, encode)
    assert len(built) == 2


def test_cached_moments_give_the_same_latents_as_the_images(vae):
    graph, params = vae
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    mean, logvar = jax.tree.map(np.asarray, nnx.merge(graph, params).posterior(images))
    key = jax.random.key(5)
    config = DiffusionConfig(data=DataConfig("phantom-cxr"), run=RunConfig("unused"), autoencoder="unused")
    spec = dict(unet_graph=None, vae_graph=graph, conditional=True)
    from_images = clean_latents({"image": images}, {"vae": params}, key,
                                spec=DiffusionSpec(**spec, config=dataclasses.replace(config, cache_latents=False)))
    from_cache = clean_latents({"mean": mean, "logvar": logvar}, {}, key,
                               spec=DiffusionSpec(**spec, config=dataclasses.replace(config, cache_latents=True)))
    np.testing.assert_allclose(np.asarray(from_cache), np.asarray(from_images), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(from_cache), mean)  # a posterior sample, not the mean


def test_latent_loader_epochs_resumption_and_shards():
    count = 20
    arrays = {"mean": np.arange(count, dtype=np.float32).reshape(count, 1, 1, 1),
              "logvar": np.zeros((count, 1, 1, 1), np.float32), "label": np.arange(count, dtype=np.int32)}
    loader = LatentLoader(arrays, global_batch_size=6, seed=3, shard_index=0, shard_count=1)
    batches = [next(loader)["label"] for _ in range(7)]
    epoch0, epoch1 = np.concatenate(batches[:3]), np.concatenate(batches[3:6])  # 20 // 6 = 3 batches per epoch
    assert len(set(epoch0)) == 18 and len(set(epoch1)) == 18
    assert not np.array_equal(epoch0, epoch1)
    for batch in batches:
        np.testing.assert_array_equal(batch, np.asarray(arrays["mean"]).ravel()[batch].astype(np.int32))

    resumed = LatentLoader(arrays, global_batch_size=6, seed=3, shard_index=0, shard_count=1)
    resumed.set_state(dict(loader.get_state(), batches=4))
    np.testing.assert_array_equal(next(resumed)["label"], batches[4])

    shards = [LatentLoader(arrays, global_batch_size=6, seed=3, shard_index=i, shard_count=2) for i in range(2)]
    together = np.concatenate([next(s)["label"] for s in shards])
    np.testing.assert_array_equal(np.sort(together), np.sort(batches[0]))
    with pytest.raises(ValueError, match="fewer than one batch"):
        LatentLoader(arrays, global_batch_size=32, seed=0, shard_index=0, shard_count=1)
