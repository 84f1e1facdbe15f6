"""Training augmentations as batch tensor ops on uint8 images, on the images' device.

Random numbers come from the epoch's (CPU) generator, a few per image, and travel to the device
without blocking: the images never leave it, and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from study.data.images import IMAGENET_MEAN, random_hflip

# The ImageNet mean pixel: an erased area is 0 after normalisation.
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)
# Random erasing's rectangle (Zhong et al., 2020, as Bag of Tricks uses it): 2-40 % of the image,
# aspect ratio 0.3-3.3, up to ERASING_TRIES draws until one fits inside the image.
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 1 / 0.3)
ERASING_TRIES = 10


def random_pad_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each image of a [B, C, H, W] batch by ``pad`` pixels and crop an H x W window at random.

    >>> batch = torch.full((2, 3, 64, 32), 255, dtype=torch.uint8)
    >>> cropped = random_pad_crop(batch, 10, torch.Generator().manual_seed(0))
    >>> cropped.shape == batch.shape, bool((cropped == 0).any())  # shifted: some padding shows
    (True, True)
    """
    if pad == 0:
        return images
    b, _, h, w = images.shape
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=device)
    offsets = offsets.to(images.device, non_blocking=True)
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = (offsets[0, :, None] + torch.arange(h, device=images.device)).view(b, 1, h, 1)
    cols = (offsets[1, :, None] + torch.arange(w, device=images.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


def random_erasing(
    images: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """With ``probability`` per image, fill a random rectangle with the mean pixel (uint8 [B, 3, H, W]).

    The rectangle covers ERASING_AREA of the image at an aspect ratio in ERASING_ASPECT (log-uniform);
    of ERASING_TRIES draws per image the first that fits is used (none fits: the image is kept).

    >>> batch = torch.zeros((4, 3, 64, 32), dtype=torch.uint8)
    >>> erased = random_erasing(batch, 1.0, torch.Generator().manual_seed(0))
    >>> erased.dtype, [bool((image != 0).any()) for image in erased]
    (torch.uint8, [True, True, True, True])
    """
    if probability == 0:
        return images
    b, _, h, w = images.shape
    device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.rand((5, b, ERASING_TRIES), generator=generator, device=device, dtype=torch.float64)
    area = h * w * (ERASING_AREA[0] + (ERASING_AREA[1] - ERASING_AREA[0]) * draws[0])
    low, high = math.log(ERASING_ASPECT[0]), math.log(ERASING_ASPECT[1])
    aspect = torch.exp(low + (high - low) * draws[1])
    heights = torch.sqrt(area * aspect).round().long()
    widths = torch.sqrt(area / aspect).round().long()
    fits = (heights < h) & (widths < w) & (heights > 0) & (widths > 0)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    height, width = heights.gather(1, first).squeeze(1), widths.gather(1, first).squeeze(1)
    top = (draws[2].gather(1, first).squeeze(1) * (h - height + 1)).long()
    left = (draws[3].gather(1, first).squeeze(1) * (w - width + 1)).long()
    erase = (draws[4, :, 0] < probability) & fits.any(dim=1)
    box = torch.stack([top, top + height, left, left + width, erase.long()]).to(
        images.device, non_blocking=True
    )
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    inside = (
        (rows >= box[0].view(b, 1, 1))
        & (rows < box[1].view(b, 1, 1))
        & (cols >= box[2].view(b, 1, 1))
        & (cols < box[3].view(b, 1, 1))
        & box[4].bool().view(b, 1, 1)
    )
    fill = torch.tensor(MEAN_PIXEL, dtype=images.dtype).view(1, 3, 1, 1).to(images.device, non_blocking=True)
    return torch.where(inside.unsqueeze(1), fill, images)


@dataclass(frozen=True)
class Augment:
    """The training augmentations of a run, in order: flip, pad-and-crop, random erasing.

    ``Augment()`` is the paper's (a flip with probability 0.5); ``data.pad_crop`` and
    ``data.random_erasing`` add the others.

    >>> batch = torch.zeros((4, 3, 64, 32), dtype=torch.uint8)
    >>> Augment(pad_crop=10, random_erasing=0.5)(batch, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 64, 32])
    """

    flip: bool = True
    pad_crop: int = 0
    random_erasing: float = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.flip:
            images = random_hflip(images, generator)
        images = random_pad_crop(images, self.pad_crop, generator)
        return random_erasing(images, self.random_erasing, generator)
