"""``python -m study.plan CONFIG.yaml [--set k=v ...] [--csv FILE]``: the per-epoch plan of a schedule."""

from __future__ import annotations

import argparse
from typing import Any

from schedules import GROUPS, Schedule
from study.config import RunConfig, load_config
from study.errors import cli, description
from study.files import atomic_write_csv, check_output_file

COLUMNS = ["epoch", "period", "group", "lr", "frozen", "reset"]


def plan_rows(schedule: Schedule) -> list[dict[str, Any]]:
    """One row per epoch and group: epoch and period from 1, lr, frozen (0/1), reset kind or 'none'.

    >>> from schedules import build_schedule
    >>> plan_rows(build_schedule({"name": "finetune", "epochs": 1}))[0]
    {'epoch': 1, 'period': 1, 'group': 'B1', 'lr': 0.01, 'frozen': 0, 'reset': 'none'}
    """
    rows = []
    for step in schedule.plan():
        for group in GROUPS:
            reset = step.resets.get(group)
            rows.append(
                {
                    "epoch": step.epoch,
                    "period": step.period,
                    "group": group,
                    "lr": float(f"{step.lr[group]:.10g}"),
                    "frozen": int(group in step.frozen),
                    "reset": reset.kind if reset else "none",
                }
            )
    return rows


def format_plan(schedule: Schedule) -> str:
    """A readable table: one line per epoch, the LR of every group, frozen groups and resets.

    Periods that may end early (on a plateau) are marked where the earliest end can fall; the table
    is then the maximum plan.
    """
    header = f"{'epoch':>5} {'period':>6} " + " ".join(f"{g:>8}" for g in GROUPS) + "  boundary"
    plan = schedule.plan()
    lines = [f"schedule {schedule.name}: {schedule.params()}"]
    conditional = sorted({step.period for step in plan if step.until is not None})
    if conditional:
        lines.append(
            f"periods {', '.join(map(str, conditional))} may end early on a plateau (their boundaries are "
            f"conditional; the later periods then start sooner): this is the maximum plan, {len(plan)} epochs"
        )
    lines.append(header)
    for step in plan:
        rates = " ".join("  frozen" if g in step.frozen else f"{step.lr[g]:>8.2g}" for g in GROUPS)
        notes = [f"{g}:{r.kind}" for g, r in step.resets.items()]
        if step.first_in_period and step.reset_optimizer:
            notes.append("new optimizer")
        until = step.until
        if until is not None and step.epoch_in_period == until.patience + 1:
            notes.append(
                f"may end from here on: {until.metric} not improved by more than {until.min_delta:g} "
                f"for {until.patience} epochs"
            )
        lines.append(f"{step.epoch:>5} {step.period:>6} {rates}  {' '.join(notes)}".rstrip())
    return "\n".join(lines)


def run_notes(config: RunConfig) -> list[str]:
    """One line per run-level option that changes training beyond the plan: the run's warm-up, the
    regularizers (``train.l2sp_alpha``, ``train.ema_decay``) and the strong-baseline tricks.

    >>> from study.config import TrainConfig
    >>> run_notes(RunConfig(train=TrainConfig(ema_decay=0.999)))
    ['EMA: validation evaluates a moving average of the weights, decay 0.999 (reset groups restart it)']
    """
    train, data, model = config.train, config.data, config.model
    notes = []
    if train.warmup_epochs > 0:
        notes.append(
            f"warm-up: epoch e of the run's first {train.warmup_epochs} trains at e/{train.warmup_epochs} "
            "of the rates above (train.warmup_epochs)"
        )
    if train.l2sp_alpha > 0:
        notes.append(
            f"L2-SP: every block pulled toward its pre-trained weights, alpha {train.l2sp_alpha:g} "
            "(not the head)"
        )
    if train.ema_decay > 0:
        notes.append(
            f"EMA: validation evaluates a moving average of the weights, decay {train.ema_decay:g} "
            "(reset groups restart it)"
        )
    tricks = []
    if model.neck == "bnneck":
        tricks.append("BNNeck head")
    if model.last_stride == 1:
        tricks.append("last stride 1")
    if train.label_smoothing > 0:
        tricks.append(f"label smoothing {train.label_smoothing:g}")
    if train.triplet_weight > 0:
        tricks.append(f"batch-hard triplet loss x{train.triplet_weight:g} (margin {train.triplet_margin:g})")
    if data.sampler == "pk":
        k = data.instances_per_identity
        tricks.append(f"batches of {train.batch_size // k} identities x {k} images")
    if data.pad_crop > 0:
        tricks.append(f"pad {data.pad_crop} and crop")
    if data.random_erasing > 0:
        tricks.append(f"random erasing p={data.random_erasing:g}")
    if tricks:
        named = f"recipe {train.recipe}" if train.recipe != "none" else "options"
        notes.append(f"training ({named}): " + ", ".join(tricks))
    return notes


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.plan", description=description(__doc__))
    parser.add_argument("config", help="run config YAML")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. schedule.period_epochs=2",
    )
    parser.add_argument("--csv", help="also write the plan as CSV (one row per epoch and group)")
    args = parser.parse_args(argv)
    if args.csv:
        check_output_file(args.csv, "--csv")
    config = load_config(args.config, args.set)
    schedule = config.built_schedule
    print(format_plan(schedule))
    for line in run_notes(config):
        print(line)
    if args.csv:
        atomic_write_csv(args.csv, plan_rows(schedule), COLUMNS)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
