"""The losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from study.config import TrainConfig
from study.losses import ReIDLoss, batch_hard_triplet


def test_batch_hard_triplet_matches_a_hand_computed_case():
    # Four points on a line: identity 0 at 0 and 2, identity 1 at 3 and 7; margin 0.5.
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: positive 2, negative 3 -> 2 - 3 + 0.5 = -0.5 -> 0
    # anchor 1: positive 2, negative 1 -> 2 - 1 + 0.5 = 1.5
    # anchor 2: positive 4, negative 1 -> 4 - 1 + 0.5 = 3.5
    # anchor 3: positive 4, negative 5 -> 4 - 5 + 0.5 = -0.5 -> 0
    loss = batch_hard_triplet(features, labels, margin=0.5)
    assert loss.item() == pytest.approx((0 + 1.5 + 3.5 + 0) / 4)


def test_batch_hard_triplet_picks_the_hardest_pairs_in_two_dimensions():
    # Identity 0 at (0,0), (3,4); identity 1 at (0,1), (6,8): distances 5, 1, 10, ...
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    labels = torch.tensor([0, 0, 1, 1])
    d = torch.cdist(features, features)
    expected = [
        max(0.0, d[0, 1] - d[0, 2] + 0.3),  # 5 - 1
        max(0.0, d[1, 0] - min(d[1, 2], d[1, 3]) + 0.3),  # 5 - sqrt(18)
        max(0.0, d[2, 3] - d[2, 0] + 0.3),  # sqrt(85) - 1
        max(0.0, d[3, 2] - d[3, 1] + 0.3),  # sqrt(85) - 5
    ]
    assert batch_hard_triplet(features, labels, 0.3).item() == pytest.approx(float(sum(expected)) / 4)
    assert expected[1] == pytest.approx(5 - math.sqrt(18) + 0.3)


def test_batch_hard_triplet_without_negatives_is_zero_and_gradients_are_finite():
    features = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.1]], requires_grad=True)
    single = batch_hard_triplet(features, torch.tensor([4, 4, 4]), 0.3)
    assert single.item() == 0
    loss = batch_hard_triplet(features, torch.tensor([0, 0, 1]), 0.3)  # two identical images
    loss.backward()
    assert torch.isfinite(features.grad).all() and loss.item() > 0


def test_default_loss_is_plain_cross_entropy_and_smoothing_follows_its_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator)
    features = torch.randn(6, 3, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    default = ReIDLoss.from_config(TrainConfig())
    assert torch.equal(default(logits, features, labels), F.cross_entropy(logits, labels))
    eps = 0.1
    log_p = logits.log_softmax(dim=1)
    targets = torch.full_like(log_p, eps / 5).scatter_(1, labels[:, None], 1 - eps + eps / 5)
    smoothed = ReIDLoss(label_smoothing=eps)(logits, features, labels)
    assert smoothed.item() == pytest.approx(-(targets * log_p).sum(dim=1).mean().item(), rel=1e-6)


def test_triplet_weight_adds_the_triplet_term():
    logits = torch.zeros(4, 2)
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss = ReIDLoss(triplet_weight=2.0, triplet_margin=0.5)(logits, features, labels)
    assert loss.item() == pytest.approx(math.log(2) + 2.0 * 1.25)
