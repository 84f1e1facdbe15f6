"""Where a sweep's time goes: training against Ray Tune, Optuna and W&B.

    python -m benchmarks.bench_sweep_overhead                 # the demo study, as the README runs it
    python -m benchmarks.bench_sweep_overhead --compare       # also without W&B, and without Ray at all

Runs ``python -m study.sweep SPACE --out DIR`` and reads back:
  wall       the sweep command end to end (Ray start and shutdown included)
  capacity   wall x trials at once: the trial-seconds the machine could give
  train      sum of the trials' train_seconds (training epochs only)
  trial      sum of Ray's time_total_s (each trial function: data, model, epochs, validation, reports)
``--compare`` runs the study again with ``wandb.mode=disabled``, then trains the same configurations
with ``study.trainer.train_run`` in a process pool of the same size: no Ray, Optuna or W&B.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_sweep(space: str, out: Path, extra: list[str]) -> float:
    """Run the study into a fresh ``out``; returns its wall time."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    command = [sys.executable, "-m", "study.sweep", space, "--out", str(out), *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def read_times(out: Path) -> dict[str, float]:
    """Sum of train_seconds (results.csv) and of Ray's time_total_s (each trial's last result)."""
    with (out / "results.csv").open() as file:
        train = sum(float(row["train_seconds"]) for row in csv.DictReader(file))
    trial = 0.0
    for result in (out / "tune").glob("*/result.json"):
        last = result.read_text().strip().splitlines()[-1]
        trial += json.loads(last)["time_total_s"]
    return {"train": train, "trial": trial}


def concurrency(space: str) -> int:
    """Trials at once on this machine: max_concurrent, or the CPUs over the CPUs per trial."""
    import os

    from study.search_space import load_search_space

    tune = load_search_space(space).tune
    by_cpu = int(len(os.sched_getaffinity(0)) // tune.cpu)
    return min(tune.max_concurrent or by_cpu, by_cpu)


def show(name: str, wall: float, slots: int, times: dict[str, float] | None = None) -> None:
    line = f"{name:<26} wall {wall:7.1f} s"
    if times:
        capacity = wall * slots
        train, trial = times["train"], times["trial"]
        line += (
            f" | capacity {capacity:7.1f} s | train {train:6.1f} s ({train / capacity:4.0%})"
            f" | trial {trial:6.1f} s ({trial / capacity:4.0%})"
            f" | overhead {capacity - trial:6.1f} s ({1 - trial / capacity:4.0%})"
        )
    print(line, flush=True)


def _train_one(config_file: str) -> float:
    import torch

    from study.config import load_config
    from study.trainer import Diverged, train_run

    torch.set_num_threads(1)
    out = Path(config_file).parent.parent.parent / "baseline" / Path(config_file).parent.name
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    with contextlib.suppress(Diverged):
        train_run(load_config(config_file), out)
    return time.perf_counter() - started


def run_baseline(study: Path, slots: int) -> float:
    """Train the study's trial configs with train_run in a pool of ``slots`` processes; returns wall time."""
    configs = sorted(str(p) for p in (study / "trials").glob("*/config.yaml"))
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(slots) as pool:
        pool.map(_train_one, configs, chunksize=1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/demo.yaml")
    parser.add_argument("--out", default="/tmp/bench-sweep")
    parser.add_argument("--compare", action="store_true", help="also without W&B, and without Ray")
    args = parser.parse_args()
    out = Path(args.out)
    slots = concurrency(args.space)
    print(f"{args.space}: {slots} trials at once")
    wall = run_sweep(args.space, out / "sweep", [])
    show("sweep (Ray, Optuna, W&B)", wall, slots, read_times(out / "sweep"))
    if args.compare:
        wall = run_sweep(args.space, out / "no-wandb", ["--set", "wandb.mode=disabled"])
        show("sweep without W&B", wall, slots, read_times(out / "no-wandb"))
        show("train_run pool, no Ray", run_baseline(out / "sweep", slots), slots)


if __name__ == "__main__":
    main()
