"""Person re-identification data: readers, the validation split, decoded images, a synthetic set.

``load_data(config.data)`` is the entry point for a run; the modules hold the pieces:
``datasets`` (file lists), ``split`` (validation identities), ``images`` (decoding, cache,
batch ops), ``sampler`` (which images form a batch), ``augment`` (training augmentations),
``synthesize`` (the synthetic data set).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from study.config import DataConfig, RunConfig
from study.data.augment import Augment, random_erasing, random_pad_crop
from study.data.datasets import (
    FORMATS,
    ReIDDataset,
    Sample,
    check_files,
    check_gallery_identities,
    check_query_gallery,
    read_dataset,
)
from study.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSet,
    ReIDData,
    check_memory,
    decode_images,
    normalize,
    random_hflip,
    verify_images,
)
from study.data.sampler import SAMPLERS, check_batches, identity_batches, make_sampler, random_batches
from study.data.split import validation_split
from study.errors import UserError
from study.files import check_output_folder

__all__ = [
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAMPLERS",
    "Augment",
    "ImageSet",
    "ReIDData",
    "ReIDDataset",
    "Sample",
    "check_batches",
    "check_data_set",
    "check_data_sets",
    "data_root",
    "decode_images",
    "identity_batches",
    "load_data",
    "make_sampler",
    "normalize",
    "random_batches",
    "random_erasing",
    "random_hflip",
    "random_pad_crop",
    "read_dataset",
    "split_samples",
    "synthetic_name",
    "validation_split",
]


def load_data(config: DataConfig) -> ReIDData:
    """Read, split and decode the data set of a run.

    ``evaluate_on="val"`` holds out ``val_identities`` training identities as query/gallery;
    ``"test"`` trains on every training identity and evaluates on the real query/gallery.

    >>> data = load_data(DataConfig(root="synthetic", height=128, width=64, evaluate_on="test"))
    >>> data.train.images.shape, data.num_classes, len(data.query)
    (torch.Size([1060, 3, 128, 64]), 60, 240)
    """
    train, query, gallery = split_samples(config)
    check_memory(len(train) + len(query) + len(gallery), config.height, config.width)

    def image_set(samples: list[Sample]) -> ImageSet:
        paths = [s.path for s in samples]
        return ImageSet(
            images=decode_images(paths, config.height, config.width, config.cache_dir),
            pids=torch.tensor([s.pid for s in samples], dtype=torch.int64),
            camids=torch.tensor([s.camid for s in samples], dtype=torch.int64),
            paths=paths,
        )

    train_set = image_set(train)
    classes, train_set.labels = torch.unique(train_set.pids, sorted=True, return_inverse=True)
    return ReIDData(train_set, len(classes), image_set(query), image_set(gallery), _display_name(config))


def check_data_set(config: RunConfig) -> None:
    """Check what can go wrong with a run's data before anything is written (a sweep: before Ray starts).

    The layout and split (``split_samples``: the format, data.val_identities, every image of the run
    present, no test image a link to a training one), batches of train.batch_size (and P x K ones with
    data.sampler: pk) drawn from the training identities, the decoded images fitting in memory, and
    every image decoding. With data.cache_dir the decoded-image cache is built here, each image decoded
    once, and runs load it; without, each image is decoded at a fraction of its size where PIL can.
    Every problem is a one-line UserError naming the file or the setting.

    For example ``check_data_set(load_config("search_spaces/demo.yaml"))``.
    """
    check_data_sets([config])


def check_data_sets(configs: Iterable[RunConfig]) -> None:
    """``check_data_set`` of every configuration of a study, each distinct data setting once.

    Trials may tune train.batch_size or data settings, so the base config alone is not enough; an
    image is verified once however many configurations read it (once per size with data.cache_dir).

    For example ``check_data_sets([config_from_dict(trial) for trial in planned_trials])``.
    """
    checked: set[str] = set()
    verified: set[str] = set()
    for config in configs:
        data = config.data
        key = json.dumps([dataclasses.asdict(data), config.train.batch_size], sort_keys=True, default=str)
        if key in checked:
            continue
        checked.add(key)
        train, query, gallery = split_samples(data)
        identities = len({s.pid for s in train})
        check_batches(
            data.sampler, len(train), identities, config.train.batch_size, data.instances_per_identity
        )
        check_memory(len(train) + len(query) + len(gallery), data.height, data.width)
        if data.cache_dir is None:
            paths = [s.path for s in (*train, *query, *gallery) if s.path not in verified]
            verify_images(paths)
            verified.update(paths)
            continue
        for samples in (train, query, gallery):
            decode_images([s.path for s in samples], data.height, data.width, data.cache_dir)


def split_samples(config: DataConfig) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """The (train, query, gallery) file lists of a run, without decoding any image.

    Generates the synthetic data set on first use; every layout and split error surfaces here, and
    a missing image (``check_files``), which lets a sweep check its data before starting any trial.
    """
    dataset = read_dataset(data_root(config), config.format)
    if config.evaluate_on == "val":
        check_files({"train": dataset.train})
        held_out = validation_identities(config.val_identities, dataset.train)
        return validation_split(dataset.train, held_out, config.split_seed)
    check_query_gallery(dataset.query, dataset.gallery)
    check_gallery_identities(dataset.gallery)
    check_files({"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery})
    return dataset.train, dataset.query, dataset.gallery


def validation_identities(value: float, train: list[Sample]) -> int:
    """``data.val_identities`` as a count: itself when >= 1, else that fraction of the training identities."""
    if value >= 1:
        return int(value)
    return max(1, round(value * len({s.pid for s in train})))


def data_root(config: DataConfig) -> Path:
    """The data set folder, generating the synthetic set on first use."""
    # Imported here so that `python -m study.data.synthesize` does not find its module pre-imported.
    from study.data.synthesize import synthesize, synthetic_name

    if config.root != "synthetic":
        return Path(config.root)
    params = config.synthetic
    root = Path(config.synthetic_dir) / synthetic_name(params.identities, params.cameras, params.seed)
    if not root.is_dir():
        check_output_folder(config.synthetic_dir, "data.synthetic_dir")
        try:
            synthesize(root, params.identities, params.cameras, params.seed)
        except UserError:
            if not root.is_dir():  # otherwise another run generated it just now
                raise
    return root


def _display_name(config: DataConfig) -> str:
    from study.data.synthesize import synthetic_name

    if config.root != "synthetic":
        return Path(config.root).resolve().stem
    params = config.synthetic
    return f"synthetic-{synthetic_name(params.identities, params.cameras, params.seed)}"
