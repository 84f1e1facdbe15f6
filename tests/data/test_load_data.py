from __future__ import annotations

import pytest
import torch

from study.config import DataConfig, SyntheticConfig
from study.data import ImageSet, load_data
from study.errors import UserError


def config(tmp_path, **changes) -> DataConfig:
    values = {
        "root": "synthetic",
        "synthetic_dir": str(tmp_path / "synthetic"),
        "synthetic": SyntheticConfig(identities=12, cameras=3, seed=0),
        "height": 32,
        "width": 16,
        "val_identities": 2,
    }
    return DataConfig(**(values | changes))


def check_image_set(images: ImageSet, labels: bool) -> None:
    n = len(images.paths)
    assert n > 0 and len(images) == n
    assert images.images.shape == (n, 3, 32, 16) and images.images.dtype == torch.uint8
    assert images.pids.shape == images.camids.shape == (n,)
    assert images.pids.dtype == images.camids.dtype == torch.int64
    assert (images.labels is not None) == labels


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("load")


def test_validation_mode(shared_dir):
    data = load_data(config(shared_dir))
    assert (shared_dir / "synthetic" / "ids12-cams3-seed0" / "bounding_box_train").is_dir()
    assert data.name == "synthetic-ids12-cams3-seed0"
    check_image_set(data.train, labels=True)
    check_image_set(data.query, labels=False)
    check_image_set(data.gallery, labels=False)
    assert data.num_classes == 4  # 6 training identities, 2 held out
    assert sorted(data.train.labels.unique().tolist()) == [0, 1, 2, 3]
    assert data.train.labels.dtype == torch.int64
    # labels follow the identities: same pid, same label
    pairs = set(zip(data.train.pids.tolist(), data.train.labels.tolist(), strict=True))
    assert len(pairs) == 4
    held_out = set(data.query.pids.tolist())
    assert len(held_out) == 2 and held_out == set(data.gallery.pids.tolist())
    assert not held_out & set(data.train.pids.tolist())
    assert held_out <= set(range(1, 7))  # validation identities come from the training half
    assert len(data.query) == 6  # one per camera


def test_test_mode_uses_every_training_identity_and_the_real_query_gallery(shared_dir):
    data = load_data(config(shared_dir, evaluate_on="test"))
    assert data.num_classes == 6
    assert set(data.train.pids.tolist()) == set(range(1, 7))
    assert set(data.query.pids.tolist()) == set(range(7, 13))
    assert torch.equal(data.train.labels, data.train.pids - 1)


def test_decoded_cache_is_used(shared_dir, tmp_path):
    cached = config(shared_dir, cache_dir=str(tmp_path / "cache"), evaluate_on="test")
    first = load_data(cached)
    assert len(list((tmp_path / "cache").iterdir())) == 3
    second = load_data(cached)
    assert torch.equal(first.gallery.images, second.gallery.images)
    assert torch.equal(first.train.images, load_data(config(shared_dir, evaluate_on="test")).train.images)


def test_a_data_set_on_disk(shared_dir):
    root = shared_dir / "synthetic" / "ids12-cams3-seed0"
    data = load_data(config(shared_dir, root=str(root), format="market", evaluate_on="test"))
    assert data.name == "ids12-cams3-seed0"
    assert len(data.query) == 18


def test_query_identity_without_gallery_image_is_an_error(shared_dir, tmp_path):
    root = tmp_path / "copy"
    original = shared_dir / "synthetic" / "ids12-cams3-seed0"
    for path in original.rglob("*.jpg"):
        target = root / path.relative_to(original)
        if not (target.parent.name == "bounding_box_test" and target.name.startswith("0009_")):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    with pytest.raises(UserError, match=r"query identity 9 \(e.g. .*0009_c1_0000.jpg\) has no gallery image"):
        load_data(config(shared_dir, root=str(root), evaluate_on="test"))


@pytest.mark.parametrize("value, held_out", [(0.5, 3), (0.2, 1), (0.01, 1), (4.0, 4)])
def test_val_identities_is_a_count_or_a_fraction_of_the_training_identities(shared_dir, value, held_out):
    data = load_data(config(shared_dir, val_identities=value))
    assert len(set(data.query.pids.tolist())) == held_out
    assert data.num_classes == 6 - held_out


def test_val_identities_must_be_whole_above_one():
    from study.config import config_from_dict

    with pytest.raises(UserError, match="whole number of identities or a fraction"):
        config_from_dict({"data": {"val_identities": 2.5}})
