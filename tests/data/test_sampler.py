"""Batch samplers: P identities x K images, identities with fewer than K images, determinism."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from study.data import identity_batches, make_sampler, random_batches
from study.errors import UserError

# 6 identities: 0-3 with 8 images each, 4 with 5, 5 with 2 (fewer than K = 4).
LABELS = torch.tensor([i for i in range(4) for _ in range(8)] + [4] * 5 + [5] * 2)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_batch_holds_p_identities_with_k_images_each():
    batches = identity_batches(LABELS, 3, 4, _generator())
    assert batches.dtype == torch.int64 and batches.shape[1] == 12 and len(batches) >= 3
    for batch in batches:
        labels = LABELS[batch].view(3, 4)
        assert (labels == labels[:, :1]).all()  # laid out as P blocks of K images of one identity
        assert len(set(labels[:, 0].tolist())) == 3  # P distinct identities


def test_chunks_cover_each_identity_and_repeat_images_only_when_an_identity_has_fewer_than_k():
    batches = identity_batches(LABELS, 2, 4, _generator())
    # chunks: 2 each for identities 0-3, 1 for identity 4 (one image left out), 1 for identity 5
    # (10 chunks, 2 per batch: 5 batches, or 4 when the last two chunks left are one identity's)
    assert len(batches) in (4, 5)
    for seed in range(5):
        counts = Counter(LABELS[identity_batches(LABELS, 2, 4, _generator(seed)).flatten()].tolist())
        assert all(count % 4 == 0 for count in counts.values())
        assert all(counts[i] <= 8 for i in range(4)) and counts[4] <= 4 and counts[5] <= 4
        assert sum(counts.values()) >= 32
    images = batches.flatten().tolist()
    small = [i for i in images if LABELS[i] == 5]
    assert set(small) <= {37, 38}  # drawn with replacement from its two images
    others = [i for i in images if LABELS[i] != 5]
    assert len(others) == len(set(others))  # every other image at most once per epoch


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    first = identity_batches(LABELS, 2, 4, _generator(3))
    assert torch.equal(first, identity_batches(LABELS, 2, 4, _generator(3)))
    assert not torch.equal(first, identity_batches(LABELS, 2, 4, _generator(4)))


def test_random_batches_are_full_batches_of_distinct_images():
    batches = random_batches(10, 4, _generator())
    assert batches.shape == (2, 4) and len(set(batches.flatten().tolist())) == 8
    assert torch.equal(batches.flatten(), torch.randperm(10, generator=_generator())[:8])


def test_make_sampler_refuses_batches_the_identities_cannot_fill():
    assert make_sampler("pk", LABELS, 8, 4)(_generator()).shape[1] == 8
    with pytest.raises(UserError, match=r"train\.batch_size=10 is not a multiple of data\.instances_per"):
        make_sampler("pk", LABELS, 10, 4)
    with pytest.raises(UserError, match="needs 8 identities x 4 images, but the training set has 6"):
        make_sampler("pk", LABELS, 32, 4)
    assert make_sampler("random", LABELS, 8)(_generator()).shape == (len(LABELS) // 8, 8)
