"""Rollback policies as declarative schedule objects.

A schedule is a frozen dataclass of parameters whose ``build()`` returns
``Period`` objects; ``plan()`` expands them per epoch for the trainer.
"""

from schedules.core import (
    BLOCKS,
    GROUPS,
    PRETRAINED,
    RANDOM,
    ConstantDecay,
    CosineDecay,
    EpochPlan,
    Period,
    Plateau,
    Reset,
    Schedule,
    ScheduleError,
    StepDecay,
    Warmup,
    next_epoch,
    settle,
    shrink_perturb,
    uniform_lr,
)
from schedules.registry import build_schedule, register, registered, schedule_class

# Importing the families registers the built-in schedules.
from schedules import paper, beyond, literature  # noqa: F401  isort: skip

__all__ = [
    "BLOCKS",
    "GROUPS",
    "PRETRAINED",
    "RANDOM",
    "ConstantDecay",
    "CosineDecay",
    "EpochPlan",
    "Period",
    "Plateau",
    "Reset",
    "Schedule",
    "ScheduleError",
    "StepDecay",
    "Warmup",
    "build_schedule",
    "next_epoch",
    "register",
    "registered",
    "schedule_class",
    "settle",
    "shrink_perturb",
    "uniform_lr",
]
