"""Bad data (issue 28): each case is one UserError naming the file or setting, from ``check_data_set``
(what a sweep's preflight runs before Ray starts) and from the trainer before its run folder exists."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from study.config import config_from_dict
from study.data import check_data_set, check_data_sets, load_data, split_samples
from study.data.images import check_memory
from study.errors import UserError

from .conftest import write_image

Row = list  # [path, pid, camid, split]
# Four training identities (two cameras, two images each); two test identities in query and gallery.
BASE_ROWS = [
    *(
        [f"train/{pid}_{cam}_{n}.jpg", pid, cam, "train"]
        for pid in range(1, 5)
        for cam in (1, 2)
        for n in (0, 1)
    ),
    *([f"test/{pid}_1.jpg", pid, 1, "query"] for pid in (5, 6)),
    *([f"test/{pid}_2.jpg", pid, 2, "gallery"] for pid in (5, 6)),
]
# PIL's decompression-bomb limit while these tests run: 1000 pixels (the data set's images have 32).
BOMB_LIMIT = 1000


def corrupt(root: Path, rows: list[Row]) -> dict:
    data = (root / "train/2_1_0.jpg").read_bytes()
    (root / "train/2_1_0.jpg").write_bytes(data[: len(data) // 2])  # a copy cut short
    return {}


def not_an_image(root: Path, rows: list[Row]) -> dict:
    (root / "train/3_2_1.jpg").write_text("not a picture")
    return {}


def bomb(side: int) -> Callable[[Path, list[Row]], dict]:
    def make(root: Path, rows: list[Row]) -> dict:
        Image.new("L", (side, side)).save(root / "train/1_1_1.jpg")
        return {}

    return make


def missing(root: Path, rows: list[Row]) -> dict:
    rows.append(["train/absent.jpg", 1, 2, "train"])
    return {}


def linked(link: Callable[[Path, Path], None]) -> Callable[[Path, list[Row]], dict]:
    def make(root: Path, rows: list[Row]) -> dict:
        link(root / "train/1_1_0.jpg", root / "test/7_1.jpg")  # the same file, under a test name
        rows.append(["test/7_1.jpg", 7, 1, "query"])
        write_image(root / "test/7_2.jpg")
        rows.append(["test/7_2.jpg", 7, 2, "gallery"])
        return {}

    return make


def huge_identity(root: Path, rows: list[Row]) -> dict:
    rows[0][1] = 2**63
    return {}


def huge_camera(root: Path, rows: list[Row]) -> dict:
    rows[-1][2] = -(2**63) - 1
    return {}


def market_huge_identity(root: Path, rows: list[Row]) -> dict:
    market = root / "market"
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        write_image(market / folder / "0001_c1_a.jpg")
        write_image(market / folder / "0002_c2_a.jpg")
    write_image(market / "bounding_box_train" / "99999999999999999999_c1_a.jpg")
    return {"root": str(market), "format": "market"}


def msmt17_not_utf8(root: Path, rows: list[Row]) -> dict:
    msmt = root / "msmt"
    for folder in ("train", "test"):
        write_image(msmt / folder / "0001" / "0001_001_01_0303morning_0008_0.jpg")
    line = b"0001/0001_001_01_0303morning_0008_0.jpg 1\n"
    for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt"):
        (msmt / name).write_bytes(line)
    (msmt / "list_val.txt").write_bytes(line + b"0001/caf\xe9.jpg 1\n")  # Latin-1, not UTF-8
    return {"root": str(msmt)}


def one_test_identity(root: Path, rows: list[Row]) -> dict:
    rows[:] = [row for row in rows if row[1] != 6]
    return {}


def settings(**data: object) -> Callable[[Path, list[Row]], dict]:
    return lambda root, rows: data


# case -> (what it does to the data set and the settings, message)
BAD_DATA = {
    "truncated-image": (corrupt, "cannot read image '{root}/train/2_1_0.jpg': "),
    "not-an-image": (not_an_image, "cannot read image '{root}/train/3_2_1.jpg': cannot identify image file"),
    "decompression-bomb": (bomb(50), "cannot read image '{root}/train/1_1_1.jpg': Image size (2500 pixels)"),
    "bomb-pil-only-warns-of": (
        bomb(40),
        "cannot read image '{root}/train/1_1_1.jpg': Image size (1600 pixels)",
    ),
    "missing-image": (missing, "train image '{root}/train/absent.jpg' cannot be read: No such file"),
    "symlink-train-in-query": (
        linked(lambda target, link: link.symlink_to(target)),
        "query image '{root}/test/7_1.jpg' is the training image '{root}/train/1_1_0.jpg' (linked)",
    ),
    "hardlink-train-in-query": (
        linked(lambda target, link: os.link(target, link)),
        "query image '{root}/test/7_1.jpg' is the training image '{root}/train/1_1_0.jpg' (linked)",
    ),
    "identity-over-int64": (
        huge_identity,
        "has identity 9223372036854775808 and camera 1; both must fit in 64",
    ),
    "camera-under-int64": (
        huge_camera,
        "has identity 6 and camera -9223372036854775809; both must fit in 64",
    ),
    "market-name-over-int64": (market_huge_identity, "has identity 99999999999999999999 and camera 1"),
    "msmt17-list-not-utf8": (
        msmt17_not_utf8,
        "MSMT17 list '{root}/msmt/list_val.txt' is not UTF-8 text: byte 0xe9",
    ),
    "test-split-of-one-identity": (
        one_test_identity,
        "the gallery holds 1 identity (e.g. {root}/test/5_2.jpg)",
    ),
    "pk-batch-of-more-identities": (
        settings(sampler="pk", instances_per_identity=2),
        "a batch of 16 needs 8 identities x 2 images, but the training set has 4 identities",
    ),
    "batch-larger-than-training-set": (
        settings(evaluate_on="val", val_identities=2),
        "the training set has 8 images, fewer than train.batch_size=16",
    ),
    "val-identities-the-set-cannot-hold": (
        settings(evaluate_on="val", val_identities=5),
        "cannot hold out 5 validation identities: only 4 of the 4 training identities",
    ),
}


@pytest.fixture
def bad_config(tmp_path, monkeypatch):
    """``bad_config(case)``: the config of a tiny manifest data set spoiled as BAD_DATA[case] says."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)

    def make(case: str, **train: object):
        root = tmp_path / "set"
        rows = [list(row) for row in BASE_ROWS]
        for path, *_ in rows:
            write_image(root / path)
        spoil, message = BAD_DATA[case]
        data = {"root": str(root / "set.csv"), "evaluate_on": "test", "height": 16, "width": 8}
        data |= spoil(root, rows)
        lines = ["path,pid,camid,split", *(",".join(map(str, row)) for row in rows)]
        (root / "set.csv").write_text("\n".join(lines) + "\n")
        sections = {"data": data, "train": {"batch_size": 16, "progress": False, **train}}
        config = config_from_dict({**sections, "schedule": {"name": "finetune", "epochs": 1}})
        return config, message.format(root=root)

    return make


def test_the_undamaged_data_set_passes(bad_config):
    config, _ = bad_config("pk-batch-of-more-identities", batch_size=8)  # 4 identities x 2 images
    check_data_set(config)
    assert len(load_data(config.data).train) == 16


@pytest.mark.parametrize("case", BAD_DATA)
def test_check_data_set_names_the_problem(bad_config, case):
    config, message = bad_config(case)
    with pytest.raises(UserError) as error:
        check_data_set(config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("case", BAD_DATA)
def test_the_trainer_refuses_it_before_its_run_folder_exists(bad_config, tmp_path, case):
    from study.trainer import train_run

    config, message = bad_config(case)
    with pytest.raises(UserError) as error:
        train_run(config, tmp_path / "run")
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()


def test_with_a_cache_dir_the_check_builds_the_cache_the_run_loads(bad_config, tmp_path):
    config, _ = bad_config("pk-batch-of-more-identities", batch_size=8)
    config.data.cache_dir = str(tmp_path / "cache")
    check_data_set(config)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert sorted(name.rpartition("-")[2] for name in cached) == ["16x16x8.pt", "2x16x8.pt", "2x16x8.pt"]
    load_data(config.data)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached  # read, not decoded again


def test_a_corrupt_image_is_named_when_the_cache_is_built(bad_config, tmp_path):
    config, _ = bad_config("truncated-image")
    config.data.cache_dir = str(tmp_path / "cache")
    with pytest.raises(UserError, match=r"2_1_0\.jpg"):
        check_data_set(config)
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_images_that_cannot_fit_in_memory_are_refused_before_any_is_decoded(monkeypatch):
    import study.data.images as images

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**18}  # a machine of 1 GiB
    monkeypatch.setattr(images.os, "sysconf", pages.__getitem__)
    check_memory(10_000, 256, 128)  # 0.9 GiB
    with pytest.raises(UserError, match=r"^20000 images decoded at 256 x 128 take 1.8 GiB, more than this"):
        check_memory(20_000, 256, 128)


def test_every_configuration_of_a_study_is_checked_and_each_image_verified_once(bad_config, monkeypatch):
    import study.data as data

    verified = []
    monkeypatch.setattr(data, "verify_images", lambda paths: verified.extend(paths))
    base, _ = bad_config("pk-batch-of-more-identities", batch_size=8)
    configs = [base, copy.deepcopy(base), copy.deepcopy(base)]
    configs[1].data.sampler = "random"  # another data setting, the same images
    check_data_sets(configs)
    assert sorted(verified) == sorted(s.path for split in split_samples(base.data) for s in split)
    configs[2].train.batch_size = 16  # a tuned batch size the identities cannot fill
    with pytest.raises(UserError, match="a batch of 16 needs 8 identities x 2 images"):
        check_data_sets(configs)
