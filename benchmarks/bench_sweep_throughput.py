"""Sweep throughput on one device: 1, 2 and 4 concurrent trials sharing it, total training images/s.

    python -m benchmarks.bench_sweep_throughput                           # sized for the device found
    python -m benchmarks.bench_sweep_throughput --concurrency 1 2 4 8 --trials 8 --epochs 10
    python -m benchmarks.bench_sweep_throughput --backbone resnet50 --height 288 --width 144 --identities 500

For each concurrency N it writes a search space (one ``finetune`` schedule with a fixed number of
epochs, ``--trials`` seeds, synthetic data, random weights, W&B disabled) with ``tune.max_concurrent: N``
and per-trial resources ``{gpu: 1/N, cpu: cores/N}`` on a GPU (``{cpu: cores/N, gpu: 0}`` on CPU),
runs the real ``python -m study.sweep SPACE --out DIR`` and reads back results.csv and epochs.csv:
  wall          the sweep command end to end (Ray start and shutdown, data decoding, validation included)
  images        training images of every trial epoch (the same work for every N)
  images/s      images over wall: the sweep's throughput; the ratio is to the first N (1 by default)
  per trial     mean images/s of the trials' epochs: how much each trial slows down when sharing
  peak MiB      the largest per-trial peak of GPU memory (CUDA only): choose tune.resources.gpu with it
Ray sets each trial's OMP_NUM_THREADS (torch's CPU threads) to max(1, floor(cpu)) unless it is set.
Defaults: the paper's ResNet-50 at 288x144 on CUDA, MobileNetV2 at 64x32 on CPU (a few minutes on 2
cores). The synthetic data set is generated once into OUT/data before any sweep is timed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from study.config import config_from_dict
from study.data import split_samples
from study.errors import cli

DEFAULTS = {
    "cuda": {
        "backbone": "resnet50",
        "height": 288,
        "width": 144,
        "identities": 500,
        "cameras": 6,
        "epochs": 5,
    },
    "cpu": {
        "backbone": "mobilenet_v2",
        "height": 64,
        "width": 32,
        "identities": 120,
        "cameras": 4,
        "epochs": 5,
    },
}


def data_config(args: argparse.Namespace, out: Path) -> dict:
    """The data section every study shares: the synthetic set in OUT/data, decoded by every trial."""
    synthetic = {"identities": args.identities, "cameras": args.cameras, "seed": 0}
    return {
        "root": "synthetic",
        "synthetic": synthetic,
        "synthetic_dir": str(out / "data"),
        "height": args.height,
        "width": args.width,
    }


def resources(n: int, device: str, cores: int) -> dict[str, float]:
    """Per-trial resources so that n trials fill the machine: a 1/n share of the GPU and of the cores."""
    cpu = cores // n if cores >= n else round(cores / n, 4)
    return {"cpu": cpu, "gpu": round(1 / n, 4) if device == "cuda" else 0}


def torch_threads(cpu: float) -> int:
    """The CPU threads a trial's torch gets: Ray sets OMP_NUM_THREADS to max(1, floor(cpu)) when unset."""
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, math.floor(cpu)))


def write_space(args: argparse.Namespace, out: Path, n: int, device: str, cores: int) -> Path:
    """The search space of concurrency n: --trials seeds of one fixed finetune run, n at a time."""
    space = {
        "model": {"backbone": args.backbone, "weights": "none"},  # weights do not change the speed
        "data": data_config(args, out),
        "schedule": {"name": "finetune", "epochs": args.epochs},
        "train": {"batch_size": args.batch, "device": device},
        "wandb": {"mode": "disabled"},
        "search": {"seeds": list(range(args.trials))},
        "tune": {
            "metric": "val_mAP",
            "num_samples": 1,
            "max_concurrent": n,
            "resources": resources(n, device, cores),
        },
    }
    path = out / f"concurrency-{n}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run_sweep(space: Path, out: Path) -> float:
    """Run the study into a fresh ``out`` (its own local Ray, output in OUT.log); returns its wall time."""
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join another cluster
    command = [sys.executable, "-m", "study.sweep", str(space), "--out", str(out)]
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with log.open("w") as file:
        done = subprocess.run(command, stdout=file, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"{tail}\n{' '.join(command)} failed (exit status {done.returncode}); see {log}")
    return wall


def read_study(out: Path) -> dict[str, float | None]:
    """Training images, mean per-trial images/s, the largest per-trial peak GPU MiB, unfinished trials."""
    with (out / "epochs.csv").open() as file:
        epochs = list(csv.DictReader(file))
    with (out / "results.csv").open() as file:
        trials = list(csv.DictReader(file))
    rates = [float(row["images_per_second"]) for row in epochs]
    peaks = [float(row["peak_gpu_mib"]) for row in trials if row.get("peak_gpu_mib")]
    return {
        "images": sum(rate * float(row["seconds"]) for rate, row in zip(rates, epochs, strict=True)),
        "per_trial": sum(rates) / len(rates) if rates else 0.0,
        "peak_mib": max(peaks, default=None),
        "unfinished": sum(row["status"] != "finished" for row in trials),
    }


HEADER = (
    f"{'N':>3} {'cpu/trial':>9} {'gpu/trial':>9} {'threads':>7} {'wall s':>8} {'images':>9} "
    f"{'images/s':>9} {'ratio':>6} {'per trial':>9} {'peak MiB':>9}"
)


def show(n: int, per_trial: dict[str, float], wall: float, study: dict, first: float) -> None:
    """One table row; ``first`` is the images/s of the first concurrency, the ratio's base."""
    rate, cpu = study["images"] / wall, per_trial["cpu"]
    peak = f"{study['peak_mib']:9.0f}" if study["peak_mib"] is not None else f"{'-':>9}"
    print(
        f"{n:>3} {cpu:>9g} {per_trial['gpu']:>9g} {torch_threads(cpu):>7} {wall:8.1f} {study['images']:9.0f} "
        f"{rate:9.1f} {rate / first:5.2f}x {study['per_trial']:9.1f} {peak}",
        flush=True,
    )


def describe_device(device: str, cores: int) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), {cores} CPU cores"
    return f"CPU, {cores} cores"


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4], help="trials at once")
    parser.add_argument("--trials", type=int, default=4, help="trials of every study (a multiple of each N)")
    parser.add_argument("--epochs", type=int, help="epochs of every trial")
    parser.add_argument("--backbone")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--identities", type=int, help="synthetic identities (half of them train)")
    parser.add_argument("--cameras", type=int)
    parser.add_argument("--out", default="/tmp/bench-sweep-throughput")
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.trials < 1:
        parser.error("--concurrency and --trials must be positive")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for key, value in DEFAULTS[device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cores = len(os.sched_getaffinity(0))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = data_config(args, out)
    train, _, _ = split_samples(config_from_dict({"data": data}).data)  # generates the data set once
    ray = importlib.metadata.version("ray")
    print(f"device: {describe_device(device, cores)}; torch {torch.__version__}, ray {ray}")
    print(
        f"{args.backbone} (random weights), {args.height}x{args.width}, batch {args.batch}; "
        f"{args.trials} trials x {args.epochs} epochs of finetune; synthetic {args.identities} identities, "
        f"{args.cameras} cameras: {len(train)} training images"
    )
    if any(args.trials % n for n in args.concurrency):
        print(f"note: {args.trials} trials is not a multiple of every N; the last round is not full")
    print(HEADER)
    first = None
    for n in args.concurrency:
        space = write_space(args, out, n, device, cores)
        wall = run_sweep(space, out / space.stem)
        study = read_study(out / space.stem)
        if study["unfinished"]:  # errors, divergences: the work would differ between the N
            where = f"{out / space.stem}/results.csv and {out / space.stem}.log"
            raise SystemExit(f"{study['unfinished']} of {args.trials} trials did not finish; see {where}")
        first = first or study["images"] / wall
        show(n, resources(n, device, cores), wall, study, first)


if __name__ == "__main__":
    main()
