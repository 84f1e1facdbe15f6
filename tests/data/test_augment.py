"""Training augmentations on uint8 batches: shapes, dtype, determinism, and p = 0 as the identity."""

from __future__ import annotations

import torch

from study.data import Augment, random_erasing, random_pad_crop
from study.data.augment import MEAN_PIXEL


def _batch(n: int = 8, h: int = 64, w: int = 32) -> torch.Tensor:
    return torch.randint(1, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pad_crop_keeps_shape_and_dtype_and_shifts_each_image_within_the_padding():
    images = _batch()
    out = random_pad_crop(images, 4, _generator())
    assert out.shape == images.shape and out.dtype == torch.uint8
    for original, cropped in zip(images, out, strict=True):
        # each output is the padded image at some offset (dy, dx) in 0..8: find it
        padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(padded[:, dy : dy + 64, dx : dx + 32], cropped)
        ]
        assert matches
    assert not torch.equal(out, images)  # some image moved
    assert (out == 0).any()  # the zero padding shows


def test_random_erasing_fills_one_rectangle_with_the_mean_pixel():
    images = _batch(n=32)
    out = random_erasing(images, 1.0, _generator())
    assert out.shape == images.shape and out.dtype == torch.uint8
    changed = (out != images).any(dim=1)  # [B, H, W]
    erased = 0
    for index, mask in enumerate(changed):
        if not mask.any():
            continue
        erased += 1
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = out[index, :, top:bottom, left:right]
        assert (box == torch.tensor(MEAN_PIXEL, dtype=torch.uint8).view(3, 1, 1)).all()  # one filled box
        area = (bottom - top) * (right - left) / (64 * 32)
        assert 0.01 <= area <= 0.45
    assert erased >= 30  # nearly every image finds a rectangle that fits


def test_probability_zero_and_no_padding_are_the_identity():
    images = _batch()
    assert random_erasing(images, 0.0, _generator()) is images
    assert random_pad_crop(images, 0, _generator()) is images
    generator = _generator()
    state = generator.get_state()
    Augment(flip=False)(images, generator)
    assert torch.equal(generator.get_state(), state)  # nothing drawn either


def test_augmentation_is_deterministic_under_the_seed():
    images = _batch()
    augment = Augment(pad_crop=5, random_erasing=0.5)
    first = augment(images, _generator(7))
    assert torch.equal(first, augment(images, _generator(7)))
    assert not torch.equal(first, augment(images, _generator(8)))
    erased = random_erasing(images, 0.5, _generator(2))
    kept = (erased == images).all(dim=(1, 2, 3))
    assert 0 < int(kept.sum()) < len(images)  # p = 0.5: some images erased, some not


def test_the_default_augmentation_is_the_flip_alone():
    from study.data import random_hflip

    images = _batch()
    assert torch.equal(Augment()(images, _generator(3)), random_hflip(images, _generator(3)))
