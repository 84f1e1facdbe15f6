"""Which training images go into each batch of an epoch: shuffled, or P identities x K images.

A sampler is a pure function of the epoch's generator, so a resumed run draws exactly the batches
an uninterrupted one would. Each returns an int64 [batches, batch_size] tensor of image indices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from study.errors import UserError

Sampler = Callable[[torch.Generator], torch.Tensor]
SAMPLERS = ("random", "pk")


def random_batches(size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``size`` images cut into full batches (the rest of the epoch is dropped).

    >>> random_batches(10, 4, torch.Generator().manual_seed(0)).shape
    torch.Size([2, 4])
    """
    count = size // batch_size
    return torch.randperm(size, generator=generator)[: count * batch_size].view(count, batch_size)


def identity_batches(
    labels: torch.Tensor, identities: int, instances: int, generator: torch.Generator
) -> torch.Tensor:
    """Batches of ``identities`` (P) distinct identities x ``instances`` (K) images each, as Bag of Tricks.

    Every identity's images are shuffled and cut into chunks of K (a last, shorter chunk is
    dropped); an identity with fewer than K images gives one chunk drawn from them with replacement.
    Each batch takes one chunk from each of P identities chosen at random among those with chunks
    left, until fewer than P have any. Within an epoch an image appears at most once, except in the
    chunks drawn with replacement. Batches are laid out identity by identity: P blocks of K.

    >>> identity_batches(torch.tensor([0, 0, 1, 1, 2, 2]), 2, 2, torch.Generator().manual_seed(0)).shape
    torch.Size([1, 4])
    """
    chunks: list[list[torch.Tensor]] = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) < instances:
            chunks.append([members[torch.randint(len(members), (instances,), generator=generator)]])
            continue
        shuffled = members[torch.randperm(len(members), generator=generator)]
        whole = len(members) // instances * instances
        chunks.append(list(shuffled[:whole].view(-1, instances)))
    batches = []
    while True:
        available = [i for i, left in enumerate(chunks) if left]
        if len(available) < identities:
            break
        chosen = torch.randperm(len(available), generator=generator)[:identities].tolist()
        batches.append(torch.cat([chunks[available[i]].pop() for i in chosen]))
    if not batches:
        return torch.empty((0, identities * instances), dtype=torch.int64)
    return torch.stack(batches)


def make_sampler(kind: str, labels: torch.Tensor, batch_size: int, instances: int = 4) -> Sampler:
    """The sampler that ``data.sampler`` names, for a training set with these identity ``labels``.

    ``"pk"`` needs ``batch_size`` divisible by ``instances`` (K) and at least P = batch_size / K
    identities; anything else is a UserError naming the values.

    >>> labels = torch.arange(8).repeat_interleave(4)  # 8 identities x 4 images
    >>> make_sampler("pk", labels, 16, 4)(torch.Generator().manual_seed(0)).shape
    torch.Size([2, 16])
    """
    check_batches(kind, len(labels), len(torch.unique(labels)), batch_size, instances)
    if kind == "random":
        return lambda generator: random_batches(len(labels), batch_size, generator)
    labels = labels.cpu()
    return lambda generator: identity_batches(labels, batch_size // instances, instances, generator)


def check_batches(kind: str, images: int, identities: int, batch_size: int, instances: int = 4) -> None:
    """Refuse batches that a training set of ``images`` images of ``identities`` identities cannot give.

    >>> check_batches("pk", images=100, identities=3, batch_size=16, instances=4)
    Traceback (most recent call last):
    study.errors.UserError: data.sampler=pk: a batch of 16 needs 4 identities x 4 images, but the ...
    """
    if images < batch_size:
        raise UserError(f"the training set has {images} images, fewer than train.batch_size={batch_size}")
    if kind == "random":
        return
    if kind != "pk":
        raise UserError(f"data.sampler must be one of {', '.join(SAMPLERS)}, got {kind!r}")
    if batch_size % instances:
        raise UserError(
            f"data.sampler=pk: train.batch_size={batch_size} is not a multiple of "
            f"data.instances_per_identity={instances}"
        )
    needed = batch_size // instances
    if identities < needed:
        raise UserError(
            f"data.sampler=pk: a batch of {batch_size} needs {needed} identities x {instances} images, "
            f"but the training set has {identities} identities; lower train.batch_size"
        )
