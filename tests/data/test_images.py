from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from study.data import IMAGENET_MEAN, IMAGENET_STD, decode_images, normalize, random_hflip
from study.data import images as images_module
from study.data.images import verify_images
from study.errors import UserError


@pytest.fixture
def files(tmp_path, jpeg):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)]
    return [str(jpeg(tmp_path / f"{i}.png", color, size=(6, 10))) for i, color in enumerate(colors)]


def test_decode_resizes_to_uint8_nchw(files):
    images = decode_images(files, height=8, width=4)
    assert images.shape == (4, 3, 8, 4) and images.dtype == torch.uint8
    assert images[0, :, 3, 2].tolist() == [255, 0, 0]  # a solid colour stays solid (PNG is lossless)
    assert images[3].unique().tolist() == [128]


def test_decode_matches_pil_bicubic(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 19, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    Image.fromarray(rng.integers(0, 256, (20, 10), dtype=np.uint8)).save(tmp_path / "grey.png")
    images = decode_images([str(tmp_path / "noise.png"), str(tmp_path / "grey.png")], height=16, width=8)
    expected = Image.open(tmp_path / "noise.png").resize((8, 16), Image.Resampling.BICUBIC)
    assert torch.equal(images[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    assert torch.equal(images[1, 0], images[1, 2])  # grey becomes RGB


def test_decode_of_nothing():
    assert decode_images([], 8, 4).shape == (0, 3, 8, 4)


def test_cache_round_trip(files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = decode_images(files, 8, 4, cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 1

    def fail(*args):
        raise AssertionError("decoded again instead of loading the cache")

    monkeypatch.setattr(images_module, "_decode_all", fail)
    assert torch.equal(decode_images(files, 8, 4, cache_dir=str(cache)), first)
    monkeypatch.undo()
    decode_images(files, 16, 8, cache_dir=str(cache))  # another size: another entry
    decode_images(files[:2], 8, 4, cache_dir=str(cache))  # other files: another entry
    assert len(list(cache.iterdir())) == 3


def test_cache_is_invalidated_when_a_file_changes(files, tmp_path, jpeg):
    cache = str(tmp_path / "cache")
    before = decode_images(files, 8, 4, cache_dir=cache)
    jpeg(tmp_path / "0.png", (0, 0, 0), size=(7, 10))
    after = decode_images(files, 8, 4, cache_dir=cache)
    assert after[0].max() == 0 and torch.equal(after[1:], before[1:])


def test_damaged_cache_is_rebuilt(files, tmp_path):
    cache = tmp_path / "cache"
    first = decode_images(files, 8, 4, cache_dir=str(cache))
    (entry,) = cache.iterdir()
    entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable image cache"):
        assert torch.equal(decode_images(files, 8, 4, cache_dir=str(cache)), first)


def test_corrupt_and_missing_images_are_named(files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(UserError, match=r"cannot read image '.*bad.jpg'"):
        decode_images([*files, str(bad)], 8, 4)
    with pytest.raises(UserError, match=r"cannot read image '.*missing.jpg'"):
        decode_images([str(tmp_path / "missing.jpg")], 8, 4)


def test_verify_names_the_first_bad_image_including_truncated_ones(files, tmp_path, jpeg):
    whole = jpeg(tmp_path / "whole.jpg", size=(64, 128))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    verify_images([*files, str(whole)])
    with pytest.raises(UserError, match=r"cannot read image '.*truncated.jpg'"):
        verify_images([*files, str(truncated), str(empty)])


def test_normalize_numerics():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 3, 2, 3)
    out = normalize(images)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 3)
    for c in range(3):
        expected = (torch.tensor([0, 0.2, 1.0]) - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[1, c, 0], expected)
    assert normalize(images, torch.bfloat16).dtype == torch.bfloat16
    assert normalize(images, torch.float64)[0, 0, 0, 2].item() == pytest.approx(
        (1 - 0.485) / 0.229, abs=1e-12
    )


def test_random_hflip_flips_about_half_of_the_images_and_nothing_else():
    images = torch.arange(64 * 3 * 2 * 5, dtype=torch.int64).view(64, 3, 2, 5).to(torch.uint8)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=True)])
    assert bool((flipped ^ kept).all())
    assert 16 < int(flipped.sum()) < 48
    assert out.dtype == images.dtype and out.device == images.device
    mask = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(flipped, mask)  # the mask is drawn on the generator, so runs can be repeated
    assert torch.equal(random_hflip(images, torch.Generator().manual_seed(0)), out)
