"""The Grain pipeline: determinism, resumption, sharding, flips, normalisation, bad images."""

import json

import grain
import numpy as np
import pytest

from medfusion_jax.data import ImageError, make_dataset, make_loader, normalize
from medfusion_jax.data.source import ImageSource


class IndexSource(ImageSource):
    """Item i is a 4x4 image whose first pixel encodes i; items in ``bad`` are unreadable."""

    def __init__(self, n, bad=()):
        super().__init__(make_dataset("phantom-cxr").info, split="train", image_size=4, channels=3)
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise ImageError(f"/data/img{i}.png", "truncated image file")
        image = np.zeros((4, 4, 3), np.uint8)
        image[0, 0, 0], image[0, 0, 1] = i % 256, i // 256
        image[0, 3, 2] = 255  # marks the top-right corner, to see flips
        return {"image": image, "label": i % 2}


def indices(batch):
    pixels = np.rint((batch["image"][:, 0, 0, :2] + 1.0) * 127.5).astype(int)
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def take(loader, n):
    return [next(loader) for _ in range(n)]


def loader(source, **kw):
    kw = {"global_batch_size": 4, "seed": 0, "shard_index": 0, "shard_count": 1, **kw}
    return make_loader(source, **kw)


def test_batches_are_normalised_nhwc_float_and_int_labels():
    batch = next(loader(make_dataset("phantom-histo", num_examples=8)))
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    # torchvision ToTensor + Normalize(0.5, 0.5) in float32.
    x = np.arange(256, dtype=np.uint8)
    expected = (x.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(normalize(x), expected)


def test_same_seed_same_batches_other_seed_other_order():
    src = IndexSource(50)
    a = [indices(b) for b in take(loader(src, seed=5), 25)]
    b = [indices(b) for b in take(loader(src, seed=5), 25)]
    c = [indices(b) for b in take(loader(src, seed=6), 25)]
    assert a == b and a != c
    # Every epoch is a permutation, a different one each epoch.
    flat = sum(a, [])
    assert sorted(flat[:50]) == list(range(50)) and sorted(flat[50:100]) == list(range(50))
    assert flat[:50] != flat[50:100]
    ordered = sum((indices(b) for b in loader(src, shuffle=False, num_epochs=1, drop_remainder=False)), [])
    assert ordered == list(range(50))


def test_resume_mid_epoch_gives_the_uninterrupted_batches():
    src = IndexSource(30)
    reference = [indices(b) for b in take(loader(src, seed=3, flips="hv"), 12)]
    first = loader(src, seed=3, flips="hv")
    take(first, 5)
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
    resumed = loader(src, seed=3, flips="hv")
    resumed.set_state(state)
    assert [indices(b) for b in take(resumed, 7)] == reference[5:]
    assert isinstance(resumed, grain.DatasetIterator)  # Grain/Orbax checkpoint handlers accept it


def test_sharding_covers_each_example_once_per_epoch_and_matches_the_global_batches():
    src = IndexSource(48)
    global_batches = [indices(b) for b in take(loader(src, global_batch_size=6, seed=1), 16)]
    shards = [
        [indices(b) for b in take(loader(src, global_batch_size=6, seed=1, shard_index=k, shard_count=3), 16)]
        for k in range(3)
    ]
    for step in range(16):
        # Processes in order give the single-process batch row for row, not only the same images: what is
        # keyed by row (the autoencoder's posterior noise) is then the same as in a one-process run.
        together = sum((shards[k][step] for k in range(3)), [])
        assert together == global_batches[step]
        assert all(len(shards[k][step]) == 2 for k in range(3))
    first_epoch = sum((shards[k][step] for k in range(3) for step in range(8)), [])
    assert sorted(first_epoch) == list(range(48))
    with pytest.raises(ValueError, match="multiple of shard_count"):
        loader(src, global_batch_size=5, shard_index=0, shard_count=3)


def test_sharded_single_pass_with_a_partial_last_batch():
    """Evaluation order (no shuffle, one epoch, partial last batch kept): 10 images, 2 processes, batch 4."""
    src = IndexSource(10)
    single = [indices(b) for b in loader(src, global_batch_size=4, shuffle=False, num_epochs=1, drop_remainder=False)]
    shards = [[indices(b) for b in loader(src, global_batch_size=4, shuffle=False, num_epochs=1, drop_remainder=False,
                                          shard_index=k, shard_count=2)] for k in range(2)]
    assert single == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert shards == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7]]]


def test_flips_are_real_flips_and_vary():
    src = IndexSource(64)
    batches = take(loader(src, global_batch_size=64, flips="hv", shuffle=False), 1)[0]["image"]
    corners = np.argwhere(batches[:, :, :, 2] > 0.5)[:, 1:]  # where the marker ended up
    seen = {tuple(c) for c in corners}
    assert seen == {(0, 3), (0, 0), (3, 3), (3, 0)}
    plain = take(loader(src, global_batch_size=64, shuffle=False), 1)[0]["image"]
    assert np.all(plain[:, 0, 3, 2] > 0.5)


class VolumeSource(ImageSource):
    """Item i is a 4x4x4 single-channel volume with one marked corner voxel (to see flips)."""

    def __init__(self, n):
        super().__init__(make_dataset("phantom-brain").info, split="train", image_size=4, channels=1)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        volume = np.zeros((4, 4, 4, 1), np.uint8)
        volume[0, 0, 3, 0] = 255
        return {"image": volume, "label": i % 2}


def test_volume_flips_flip_each_axis_as_named():
    """'h' flips W (left-right), 'v' flips H, 'd' flips D: with all three, the marked voxel reaches all
    eight corners; with 'h' alone only its W coordinate changes."""
    batch = take(loader(VolumeSource(128), global_batch_size=128, flips="hvd", shuffle=False), 1)[0]["image"]
    assert batch.shape == (128, 4, 4, 4, 1)
    corners = {tuple(c) for c in np.argwhere(batch[..., 0] > 0.5)[:, 1:]}
    assert corners == {(d, h, w) for d in (0, 3) for h in (0, 3) for w in (0, 3)}
    batch = take(loader(VolumeSource(64), global_batch_size=64, flips="h", shuffle=False), 1)[0]["image"]
    assert {tuple(c) for c in np.argwhere(batch[..., 0] > 0.5)[:, 1:]} == {(0, 0, 0), (0, 0, 3)}


def test_unreadable_images_are_skipped_and_counted_unless_strict():
    src = IndexSource(20, bad={3, 11})
    with loader(src, num_epochs=1, shuffle=False, drop_remainder=False) as it:
        seen = sum((indices(b) for b in it), [])
        assert it.skipped == 2 and it.get_state()["skipped"] == 2
    assert seen == [i for i in range(20) if i not in (3, 11)]
    with pytest.raises(ImageError, match="/data/img3.png: truncated"):
        list(loader(src, num_epochs=1, shuffle=False, strict=True))


def test_worker_processes_give_the_same_batches_and_resume():
    src = make_dataset("phantom-fundus", image_size=16, num_examples=24)
    plain = take(loader(src, seed=2, flips="h"), 8)
    with loader(src, seed=2, flips="h", worker_count=2) as it:
        workers = take(it, 4)
        state = it.get_state()
    for a, b in zip(plain[:4], workers, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    with loader(src, seed=2, flips="h", worker_count=2) as resumed:
        resumed.set_state(state)
        for a, b in zip(plain[4:], take(resumed, 4), strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
