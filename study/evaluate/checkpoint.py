"""A training checkpoint as a model to evaluate: its run config and weights (the EMA weights where
the run kept them), loaded into the configured network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from study import run_folder
from study.config import RunConfig, config_from_dict
from study.errors import UserError
from study.models import build_model


def load_checkpoint(path: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """The run config and model state_dict (the EMA weights when the run kept them) of a training
    checkpoint; one-line UserErrors for bad files."""
    checkpoint = run_folder.read_checkpoint(path)
    # With train.ema_decay the run validated its EMA weights: those are the checkpoint's model.
    return config_from_dict(checkpoint["config"]), checkpoint.get("ema", checkpoint["model"])


def num_classes_of(state: dict[str, torch.Tensor]) -> int:
    """Training identities of a ReIDNet state_dict: the output size of the head's last Linear."""
    matrices = [
        v for k, v in state.items() if k.startswith("head.") and k.endswith(".weight") and v.ndim == 2
    ]
    if not matrices:
        raise UserError(
            "the checkpoint's model has no head.*.weight matrix, so its classifier size is unknown"
        )
    return matrices[-1].shape[0]


def model_from_checkpoint(config: RunConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """Build the configured ReIDNet and load ``state`` (no pre-trained weights: the checkpoint has them)."""
    model = build_model(dataclasses.replace(config.model, weights="none"), num_classes_of(state))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        first = missing[:1] or unexpected[:1] or wrong[:1]
        raise UserError(
            f"the checkpoint's weights do not fit the {config.model.backbone} model of its config"
            f" ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong shape;"
            f" first: {first[0]!r})"
        )
    model.load_state_dict(state)
    return model
