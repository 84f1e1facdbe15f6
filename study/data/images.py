"""Decoded images: PIL decoding into uint8 tensors, an on-disk cache, and batch tensor ops."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from study.errors import UserError
from study.files import atomic_torch_save, check_output_folder, remove_stale_temporaries

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CACHE_VERSION = 1
T = TypeVar("T")


@dataclass
class ImageSet:
    """Decoded images with their identities and cameras; ``labels`` (0..L-1) only for training sets."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    pids: torch.Tensor  # int64 [N], identities as in the data set
    camids: torch.Tensor  # int64 [N]
    paths: list[str]
    labels: torch.Tensor | None = None  # int64 [N]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class ReIDData:
    """Everything a run needs: the training set and the query/gallery it is evaluated on."""

    train: ImageSet
    num_classes: int
    query: ImageSet
    gallery: ImageSet
    name: str


def decode_images(paths: list[str], height: int, width: int, cache_dir: str | None = None) -> torch.Tensor:
    """Decode images to RGB, resize to (height, width) with bicubic filtering: uint8 [N, 3, H, W].

    With ``cache_dir`` the result is saved there and loaded again while the files are unchanged.

    For example, ``decode_images(["a.jpg", "b.jpg"], 288, 144)`` has the shape [2, 3, 288, 144].
    """
    if cache_dir is None:
        return _decode_all(paths, height, width)
    file = Path(cache_dir) / f"images-{_cache_key(paths, height, width)}.pt"
    if file.is_file():
        try:
            images = torch.load(file, weights_only=True)
            if images.shape == (len(paths), 3, height, width) and images.dtype == torch.uint8:
                return images
        except Exception as error:  # a damaged cache is rebuilt, not fatal
            warnings.warn(f"ignoring unreadable image cache {file}: {error}", stacklevel=2)
    check_output_folder(cache_dir, "data.cache_dir")  # before decoding, not when saving
    images = _decode_all(paths, height, width)
    remove_stale_temporaries(file.parent)  # of an earlier save that was killed
    atomic_torch_save(images, file)
    return images


def verify_images(paths: list[str]) -> None:
    """Raise a UserError naming the first image (in list order) that cannot be decoded."""
    with _bombs_refused():
        errors = _parallel_map(_check_image, paths)
    for path, error in zip(paths, errors, strict=True):
        if error is not None:
            raise UserError(f"cannot read image {path!r}: {error}")


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> ``dtype``, scaled to [0, 1] and standardised with ImageNet mean/std.

    >>> normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))[0, :, 0, 0]
    tensor([2.2489, 2.4286, 2.6400])
    """
    compute = torch.promote_types(dtype, torch.float32)
    # Built on the CPU and copied without blocking: no wait for the GPU inside a training step.
    mean = torch.tensor(IMAGENET_MEAN, dtype=compute).view(1, 3, 1, 1).to(images.device, non_blocking=True)
    std = torch.tensor(IMAGENET_STD, dtype=compute).view(1, 3, 1, 1).to(images.device, non_blocking=True)
    return ((images.to(compute) / 255 - mean) / std).to(dtype)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of a [B, C, H, W] batch left-right with probability 0.5, on its device.

    >>> batch = torch.arange(2 * 4).view(2, 1, 1, 4)  # two one-row images: 0 1 2 3 and 4 5 6 7
    >>> random_hflip(batch, torch.Generator().manual_seed(0)).flatten().tolist()
    [3, 2, 1, 0, 4, 5, 6, 7]
    """
    device = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(images.shape[0], generator=generator, device=device) < 0.5
    flip = flip.to(images.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def check_memory(images: int, height: int, width: int) -> None:
    """Refuse decoding ``images`` images at height x width when they would not fit in this machine's memory.

    >>> check_memory(10**6, 2048, 2048)
    Traceback (most recent call last):
    study.errors.UserError: 1000000 images decoded at 2048 x 2048 take 11718.8 GiB, more than ...
    """
    needed = images * 3 * height * width
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise UserError(
            f"{images} images decoded at {height} x {width} take {needed / 2**30:.1f} GiB, more than this"
            f" machine's {memory / 2**30:.1f} GiB of memory; lower data.height and data.width"
        )


def _decode_all(paths: list[str], height: int, width: int) -> torch.Tensor:
    check_memory(len(paths), height, width)
    out = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)

    def decode(index: int) -> None:
        out[index] = torch.from_numpy(_decode(paths[index], height, width)).permute(2, 0, 1)

    with _bombs_refused():
        for _ in _parallel_map(decode, range(len(paths))):
            pass
    return out


# What PIL raises for missing, broken or oversized ("decompression bomb") files.
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextlib.contextmanager
def _bombs_refused() -> Iterator[None]:
    """PIL only warns of an image over Image.MAX_IMAGE_PIXELS (up to twice that): refuse it too.

    The filter is process-wide, so the worker threads of _parallel_map see it while it is on.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _decode(path: str, height: int, width: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            return np.array(image)  # writable, as torch.from_numpy wants
    except _UNREADABLE as error:
        raise UserError(f"cannot read image {path!r}: {error}") from None


def _check_image(path: str) -> str | None:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reads every byte
            image.load()
        return None
    except _UNREADABLE as error:
        return str(error) or type(error).__name__


def _parallel_map(function: Callable[..., T], items: Iterable) -> list[T]:
    # PIL releases the GIL while decoding, so threads use every core.
    pool = ThreadPoolExecutor(min(16, len(os.sched_getaffinity(0))))
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(cancel_futures=True)


def _cache_key(paths: list[str], height: int, width: int) -> str:
    files = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise UserError(f"cannot read image {path!r}: {error.strerror}") from None
        files.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
    text = json.dumps([_CACHE_VERSION, height, width, files])
    return f"{hashlib.sha256(text.encode()).hexdigest()[:24]}-{len(paths)}x{height}x{width}"
