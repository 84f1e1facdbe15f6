"""Validation split: hold out training identities as a query/gallery set (Market-1501 style)."""

from __future__ import annotations

import random
from collections import defaultdict

from study.data.datasets import Sample
from study.errors import UserError


def validation_split(
    train: list[Sample], identities: int, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split ``train`` into (train_rest, val_query, val_gallery), identity-disjoint.

    Each held-out identity gives one query image per camera; its other images form the gallery.
    Only identities with at least two images in each of at least two cameras can be held out:
    then every query has a gallery match from another camera (same-camera matches are junk).

    For example, ``rest, query, gallery = validation_split(data.train, identities=100, seed=0)``.
    """
    if identities <= 0:
        raise UserError(f"the validation split needs a positive number of identities, got {identities}")
    by_pid = _group(train)
    eligible = [pid for pid, images in sorted(by_pid.items()) if _holdable(images)]
    if len(eligible) < identities:
        raise UserError(
            f"cannot hold out {identities} validation identities: only {len(eligible)} of the {len(by_pid)}"
            " training identities have 2+ images in each of 2+ cameras; lower data.val_identities"
        )
    if identities >= len(by_pid):
        raise UserError(
            f"holding out {identities} validation identities leaves none of the {len(by_pid)} for training;"
            " lower data.val_identities"
        )
    rng = random.Random(seed)
    held_out = set(rng.sample(eligible, identities))
    queries = set()
    for pid in sorted(held_out):
        cameras = by_pid[pid]
        for camid in sorted(cameras):
            queries.add(rng.choice(sorted(cameras[camid], key=lambda s: s.path)))
    rest = [s for s in train if s.pid not in held_out]
    query = [s for s in train if s in queries]
    gallery = [s for s in train if s.pid in held_out and s not in queries]
    return rest, query, gallery


def _group(samples: list[Sample]) -> dict[int, dict[int, list[Sample]]]:
    by_pid: dict[int, dict[int, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        by_pid[sample.pid][sample.camid].append(sample)
    return by_pid


def _holdable(cameras: dict[int, list[Sample]]) -> bool:
    return sum(len(images) >= 2 for images in cameras.values()) >= 2
