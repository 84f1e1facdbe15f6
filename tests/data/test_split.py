from __future__ import annotations

from collections import Counter

import pytest

from study.data import Sample, validation_split
from study.errors import UserError


def make_train(pids: range, cameras: int, per_camera: int) -> list[Sample]:
    return [
        Sample(f"{pid:04d}_c{cam}_{n:02d}.jpg", pid, cam)
        for pid in pids
        for cam in range(1, cameras + 1)
        for n in range(per_camera)
    ]


TRAIN = make_train(range(1, 21), cameras=3, per_camera=3)


def test_held_out_identities_are_disjoint_from_the_rest_and_nothing_is_lost():
    rest, query, gallery = validation_split(TRAIN, identities=5, seed=0)
    held_out = {s.pid for s in query}
    assert len(held_out) == 5
    assert {s.pid for s in gallery} == held_out
    assert not held_out & {s.pid for s in rest}
    assert sorted(rest + query + gallery, key=lambda s: s.path) == sorted(TRAIN, key=lambda s: s.path)


def test_one_query_per_camera_and_a_gallery_for_every_held_out_identity():
    _, query, gallery = validation_split(TRAIN, identities=5, seed=0)
    assert Counter((s.pid, s.camid) for s in query) == {
        (pid, cam): 1 for pid in {s.pid for s in query} for cam in (1, 2, 3)
    }
    assert Counter(s.pid for s in gallery) == {pid: 6 for pid in {s.pid for s in query}}
    for q in query:  # every query has a match from another camera
        assert any(g.pid == q.pid and g.camid != q.camid for g in gallery)


def test_deterministic_per_seed():
    assert validation_split(TRAIN, 5, seed=3) == validation_split(TRAIN, 5, seed=3)
    held_out = [{s.pid for s in validation_split(TRAIN, 5, seed)[1]} for seed in range(4)]
    assert len({frozenset(h) for h in held_out}) > 1


def test_only_identities_with_two_images_in_two_cameras_are_held_out():
    single_camera = make_train(range(1, 11), cameras=1, per_camera=4)
    single_images = make_train(range(11, 21), cameras=3, per_camera=1)
    good = make_train(range(21, 24), cameras=2, per_camera=2)
    _, query, _ = validation_split(single_camera + single_images + good, identities=3, seed=0)
    assert {s.pid for s in query} == {21, 22, 23}


def test_too_few_eligible_identities_is_a_clear_error():
    train = make_train(range(1, 11), cameras=1, per_camera=4) + make_train(
        range(11, 13), cameras=2, per_camera=2
    )
    with pytest.raises(
        UserError, match="cannot hold out 3 validation identities: only 2 of the 12 training identities"
    ):
        validation_split(train, identities=3, seed=0)


def test_holding_out_every_identity_is_an_error():
    with pytest.raises(UserError, match="leaves none of the 20 for training"):
        validation_split(TRAIN, identities=20, seed=0)
    with pytest.raises(UserError, match="positive number of identities, got 0"):
        validation_split(TRAIN, identities=0, seed=0)
