"""Training losses: identity cross-entropy (optionally label-smoothed) plus a batch-hard triplet loss.

The paper trains with plain softmax cross-entropy, the default. The Bag of Tricks baseline (Luo et
al., 2019) smooths the labels and adds a batch-hard triplet loss (Hermans et al., 2017) on the pooled
feature, the one before the BNNeck's BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from study.config import TrainConfig


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors of max(0, d(a, hardest positive) - d(a, hardest negative) + margin).

    Distances are Euclidean; the hardest positive is the farthest image of the anchor's identity (the
    anchor itself included, at distance 0), the hardest negative the closest image of another. An
    anchor without a negative in the batch contributes 0.

    >>> batch_hard_triplet(torch.tensor([[0.0], [1.0], [3.0], [4.0]]), torch.tensor([0, 0, 1, 1]), 0.3)
    tensor(0.)
    """
    features = features.float()
    norms = features.square().sum(dim=1)
    squared = norms.unsqueeze(0) + norms.unsqueeze(1) - 2 * features @ features.T
    # Clamped before the square root: no NaN gradient at the zero distance of an image to itself.
    distance = squared.clamp(min=1e-12).sqrt()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    hardest_positive = distance.masked_fill(~same, 0.0).amax(dim=1)
    hardest_negative = distance.masked_fill(same, torch.inf).amin(dim=1)
    losses = F.relu(hardest_positive - hardest_negative + margin)
    has_negative = (~same).any(dim=1)
    return torch.where(has_negative, losses, torch.zeros_like(losses)).mean()


class ReIDLoss:
    """Cross-entropy with ``label_smoothing`` plus ``triplet_weight`` times the batch-hard triplet loss.

    With the defaults (no smoothing, triplet weight 0) it is exactly ``F.cross_entropy``.

    >>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    >>> features = torch.tensor([[0.0], [0.1]])  # the two identities 0.1 apart: the triplet loss is 0.2
    >>> plain, with_triplet = ReIDLoss(), ReIDLoss(triplet_weight=1.0, triplet_margin=0.3)
    >>> round((with_triplet(logits, features, labels) - plain(logits, features, labels)).item(), 4)
    0.2
    """

    def __init__(
        self, label_smoothing: float = 0.0, triplet_weight: float = 0.0, triplet_margin: float = 0.3
    ):
        self.label_smoothing = label_smoothing
        self.triplet_weight = triplet_weight
        self.triplet_margin = triplet_margin

    @classmethod
    def from_config(cls, train: TrainConfig) -> ReIDLoss:
        """The loss of ``train.label_smoothing``, ``train.triplet_weight`` and ``train.triplet_margin``."""
        return cls(train.label_smoothing, train.triplet_weight, train.triplet_margin)

    def __call__(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.triplet_weight > 0:
            loss = loss + self.triplet_weight * batch_hard_triplet(features, labels, self.triplet_margin)
        return loss
