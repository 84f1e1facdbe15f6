"""``python -m study.sweep``: check everything a study needs before Ray starts, then run it."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
from pathlib import Path
from typing import Any

from study.config import config_from_dict, set_dotted
from study.errors import UserError, cli
from study.files import remove_stale_temporaries
from study.search_space import (
    SCHEDULE_KEY,
    SEED_KEY,
    SearchSpace,
    load_search_space,
)
from study.sweep.preflight import LOCK, USER_ERROR, preflight, study_lock
from study.sweep.wandb_mode import online_or_offline, wandb_mode, wandb_notice


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m study.sweep",
        description="Run a study: Ray Tune trials, Optuna TPE or a grid, W&B logging.",
        epilog="The search-space format is described in study/search_space.py and atop search_spaces/*.yaml.",
    )
    parser.add_argument("search_space", help="search-space YAML: a run config plus search and tune sections")
    parser.add_argument("--out", help="study folder (default runs/<search-space name>)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. tune.num_samples=4"
    )
    parser.add_argument(
        "--address", help="join this Ray cluster (e.g. auto, or HOST:6379) instead of starting a local one"
    )
    parser.add_argument("--resume", action="store_true", help="continue the study in --out")
    parser.add_argument(
        "--verbose", action="store_true", help="also print Ray Tune's status table (every 30 s)"
    )
    args = parser.parse_args(argv)

    space = load_search_space(args.search_space, args.set)
    base = config_from_dict(space.base)
    mode = wandb_mode(base.wandb.mode)
    out = Path(args.out or Path("runs") / space.name).resolve()
    restore = preflight(space, base, out, args.address, args.resume, mode)  # every problem, in one message
    mode, unreachable = online_or_offline(mode, out)
    if notice := unreachable or wandb_notice(base.wandb.mode, mode, out):
        print(notice)
    fresh = not out.exists()
    try:
        with study_lock(out):
            remove_stale_temporaries(out)  # of result tables a kill interrupted; under the lock
            print(describe(space))
            sharing, planned_epochs = share_prefixes(space, out)
            print("\n".join(sharing))
            print(memory_line(space, base, out))
            from study.sweep.tuner import run_study  # imports Ray: only once check_installed passed

            statuses = run_study(space, out, args.address, restore, mode, planned_epochs, args.verbose)
    except UserError:
        if fresh:  # refused before any trial (a cluster short of resources): leave no empty folder
            with contextlib.suppress(OSError):
                (out / LOCK).unlink(missing_ok=True)
                out.rmdir()
        raise
    if (out / USER_ERROR).exists():  # a trial's bad input: every trial would have failed alike
        raise UserError((out / USER_ERROR).read_text())
    print(summary_line(statuses))
    print(f"wrote {out}/results.csv and {out}/epochs.csv; next: python -m study.report {out}")
    if "interrupted" in statuses or len(statuses) < space.num_trials:
        print(f"interrupted; continue with: {resume_command(args.search_space, out, args.set, args.address)}")
        raise SystemExit(130)
    if "error" in statuses:  # a bug or a lost machine, not a bad configuration: diverged trials are results
        print(f"{statuses.count('error')} trial(s) failed; their errors are in {out}/tune/*/error.txt")
        raise SystemExit(1)


def resume_command(search_space: str, out: Path, sets: list[str], address: str | None = None) -> str:
    """The command that continues a study: the same search space and ``--set`` options, with ``--resume``.

    >>> resume_command("demo.yaml", Path("runs/demo"), ["search.seeds=[0, 1]"])
    "python -m study.sweep demo.yaml --out runs/demo --set 'search.seeds=[0, 1]' --resume"
    """
    words = ["python", "-m", "study.sweep", search_space, "--out", str(out)]
    words += [word for value in sets for word in ("--set", value)]
    words += ["--address", address] if address else []
    return shlex.join([*words, "--resume"])


def describe(space: SearchSpace) -> str:
    """``study demo: 6 trials (3 configurations x 2 seeds); epochs per trial: finetune 9, ...``, or for a
    grid ``study grid: a grid of 4 configurations (finetune 1, base_cy 3) x 2 seeds = 8 trials; ...``."""
    epochs = []
    for schedule in space.schedules:
        tuned = any(not p.fixed and p.schedule_param for p in space.params_for(schedule))
        epochs.append(f"{schedule} {epochs_of(space, schedule)}{' at the base values' if tuned else ''}")
    epochs_line = f"epochs per trial: {', '.join(epochs)}"
    if space.tune.sampler == "grid":
        schedules = [point[SCHEDULE_KEY] for point in space.grid()]
        sizes = ", ".join(f"{s} {schedules.count(s)}" for s in space.schedules)
        return (
            f"study {space.name}: a grid of {len(schedules)} configurations ({sizes}) x "
            f"{len(space.seeds)} seeds = {space.num_trials} trials; {epochs_line}"
        )
    return (
        f"study {space.name}: {space.num_trials} trials ({space.tune.num_samples} configurations x "
        f"{len(space.seeds)} seeds); {epochs_line}"
    )


def epochs_of(space: SearchSpace, schedule: str) -> int:
    """The epochs of a trial of ``schedule`` at its fixed and base values."""
    data = space.base_for(schedule)
    for param in space.params_for(schedule):
        if param.fixed:
            set_dotted(data, param.key, param.args[0])
    return config_from_dict(data).built_schedule.total_epochs


def share_prefixes(space: SearchSpace, out: Path) -> tuple[list[str], int]:
    """Which trials of a grid share which first epochs (marked in DIR/prefixes, so whichever runs
    first saves them for the others), and the epochs left to train; TPE's trials are only known as
    they start, and share what they find then (the epochs: every trial's at the base values)."""
    from study.prefixes import PREFIXES, PrefixStore, describe_sharing, epochs_to_train

    if space.tune.sampler != "grid":
        schedules = space.schedules  # configuration c compares schedule c mod k
        planned = sum(epochs_of(space, schedules[c % len(schedules)]) for c in range(space.tune.num_samples))
        lines = ["shared prefixes: taken as trials start (TPE samples configurations one by one)"]
        return lines, planned * len(space.seeds)
    configs = {}
    for number, point in enumerate(space.grid()):
        schedule = point[SCHEDULE_KEY]
        fixed = {p.key: p.args[0] for p in space.params_for(schedule) if p.fixed}
        for seed in space.seeds:
            name = f"#{number} {schedule}" + (f" seed {seed}" if len(space.seeds) > 1 else "")
            configs[name] = space.run_config(fixed | point | {SEED_KEY: seed})
    PrefixStore(out / PREFIXES).want_forks(configs)
    return describe_sharing(configs), epochs_to_train(configs)[0]


# What a CPU trial's worker holds besides its decoded images: Python, torch, Ray, MobileNetV2 at 64x32
# compiled (1.2-1.3 GiB measured per trial worker of the tuned CUHK03 study); larger models hold more.
WORKER_MIB = 1250


def memory_line(space: SearchSpace, base: Any, out: Path) -> str:
    """How much host memory a trial holds (measured in a resumed study, else estimated), and whether
    the trials that run at once fit in this machine's available memory (Ray stops workers at 95 %)."""
    import csv

    from study.data import split_samples

    at_once = space.tune.max_concurrent or max(1, int((os.cpu_count() or 1) // space.tune.cpu))
    available = available_mib()
    measured = []
    if (out / "results.csv").exists():
        with (out / "results.csv").open() as file:
            measured = [float(r["peak_host_mib"]) for r in csv.DictReader(file) if r.get("peak_host_mib")]
    if measured:
        per_trial, how = max(measured), "its peak so far, measured"
    else:
        images = sum(len(part) for part in split_samples(base.data))
        decoded = images * 3 * base.data.height * base.data.width / 2**20
        per_trial, how = (
            decoded + WORKER_MIB,
            f"estimated: {decoded:.0f} MiB of decoded images + a worker",
        )
    line = (
        f"memory: a trial holds about {per_trial / 1024:.1f} GiB ({how}); {at_once} at once need about "
        f"{at_once * per_trial / 1024:.1f} of the {available / 1024:.1f} GiB available here"
    )
    fits = int(0.9 * available // per_trial)
    if at_once > fits:
        line += f"; set tune.max_concurrent to {max(fits, 1)} or free memory (Ray stops workers at 95 %)"
    return line


def available_mib() -> float:
    """This machine's available memory (MemAvailable), in MiB."""
    with open("/proc/meminfo") as file:
        for line in file:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**20


def summary_line(statuses: list[str]) -> str:
    """``8 trials: 5 finished, 2 stopped, 1 diverged``."""
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    return f"{len(statuses)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
