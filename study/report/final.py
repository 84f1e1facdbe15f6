"""``study.report --final``: retrain a study's best configuration and fine-tuning on the test protocol.

The report only reads a study; this module trains: it picks the configurations, builds the
fine-tuning baseline when the study has none, and runs them once per seed, here or in processes
that share the machine's cores (and its GPUs in turn).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd

from study.errors import UserError
from study.prefixes import PREFIX_TAKEN, PREFIXES, PrefixStore, describe_sharing
from study.report.loading import Study


def retrain_final(study: Study, seeds: list[int] | None = None, jobs: int = 1) -> list[dict[str, Any]]:
    """Retrain the best configuration and the fine-tuning baseline on the test protocol, once per seed
    (``seeds``, by default the study's), ``jobs`` runs at a time; where the study ran
    ``incremental_rollback``, also its best configuration (when it is not the best) and its control,
    ``base_cy`` at the rollback's values (label ``control``).

    Runs go to DIR/final/LABEL/seed-N; finished ones are read back, interrupted ones resumed.

    For example ``retrain_final(load_study("runs/cuhk03_periods"), seeds=[0, 1, 2], jobs=3)``.
    """
    from study.config import config_from_dict
    from study.search_space import SCHEDULE_KEY, SEED_KEY, parse_search_space

    best = study.best_per_schedule().dropna(subset=["mAP_mean"])
    if best.empty:
        raise UserError("no trial has been validated yet; nothing to retrain")
    source = {k: v for k, v in study.saved.items() if k != "_name"}
    space = parse_search_space(source, study.name)

    def configuration(row: pd.Series) -> dict[str, Any]:
        sampled = study.sampled(row["trial_ids"][0])
        sampled.pop(SEED_KEY)
        return sampled

    chosen = {"best": lambda seed: space.run_config(configuration(best.iloc[0]) | {SEED_KEY: seed})}
    finetune = best[best["schedule"] == "finetune"]
    if best.iloc[0]["schedule"] != "finetune" and not finetune.empty:
        chosen["finetune"] = lambda seed: space.run_config(configuration(finetune.iloc[0]) | {SEED_KEY: seed})
    elif best.iloc[0]["schedule"] != "finetune":
        # The paper's baseline, one period with LR x0.1 half-way, for as many epochs as the best trains.
        epochs = chosen["best"](0).built_schedule.total_epochs
        baseline = space.base_for("finetune")
        baseline["schedule"] |= {"epochs": epochs, "decay_every": "half"}
        chosen["finetune"] = lambda seed: config_from_dict(
            copy.deepcopy(baseline), [f"train.seed={seed}", "train.progress=false"]
        )
    rollback = best[best["schedule"] == "incremental_rollback"]
    if not rollback.empty:  # its control: the same restarts and values, nothing rolled back
        values = configuration(rollback.iloc[0]) | {SCHEDULE_KEY: "base_cy"}
        if best.iloc[0]["schedule"] != "incremental_rollback":
            chosen["rollback"] = lambda seed: space.run_config(
                configuration(rollback.iloc[0]) | {SEED_KEY: seed}
            )
        chosen["control"] = lambda seed: space.run_config(values | {SEED_KEY: seed})
    runs, pending, configs = [], [], {}
    for label, make_config in chosen.items():
        for seed in seeds or space.seeds:
            config = make_config(seed)
            config.data.evaluate_on = "test"
            config.train.progress = jobs == 1  # the bars of several processes would interleave
            folder = study.folder / "final" / label / f"seed-{seed}"
            runs.append({"label": label, "seed": seed, "folder": str(folder.relative_to(study.folder))})
            configs[f"{label}-seed-{seed}"] = config
            if not (folder / "summary.json").exists():
                pending.append((f"{label} ({config.schedule['name']}, seed {seed})", config, folder))
    # the rollback and its control share their first period: trained once (study.prefixes)
    store = PrefixStore(study.folder / "final" / PREFIXES)
    store.want_forks(configs)
    if pending:
        print("\n".join(describe_sharing(configs)))
    if jobs == 1:
        for what, config, folder in pending:
            print(f"retraining {what} on the test protocol into {folder}")
            _train_final(config, folder, what, store.folder)
    else:
        _train_in_processes(pending, jobs, store.folder)
    for run in runs:
        folder = study.folder / run["folder"]
        run["summary"] = json.loads((folder / "summary.json").read_text())
        taken = folder / PREFIX_TAKEN
        run["shared"] = json.loads(taken.read_text()) if taken.exists() else None
    return runs


def _train_final(config: Any, folder: Path, what: str, prefixes: Path) -> None:
    from study.trainer import Diverged, train_run

    name = f"{folder.parent.name}-{folder.name}"  # as in want_forks: LABEL-seed-N
    try:
        with PrefixStore(prefixes).joined(name, config, folder) as shared:
            train_run(config, folder, resume=True, prefixes=shared)
    except Diverged as error:  # a result, not a failure: the table shows it, summary.json says so
        print(f"{what} diverged ({error}); it counts as no test mAP")


def threads_per_job(jobs: int) -> int:
    """The torch CPU threads of each of ``jobs`` runs at once: an equal share of this process's cores.

    ``threads_per_job(3)`` is 5 on a 16-core machine, 1 on a 2-core one.
    """
    import os

    return max(1, len(os.sched_getaffinity(0)) // jobs)


def _train_in_processes(pending: list[tuple[str, Any, Path]], jobs: int, prefixes: Path) -> None:
    """Train ``jobs`` runs at a time, each in its own process with its share of the cores (and, on a
    machine of several GPUs, the GPUs in turn); the first failure is raised once the others end."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    gpus = torch.cuda.device_count()
    # spawn, not fork: a forked child cannot use CUDA, and torch's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    threads = threads_per_job(jobs)
    with ProcessPoolExecutor(jobs, context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        submitted = {}
        for index, (what, config, folder) in enumerate(pending):
            if gpus > 1 and config.train.device in ("auto", "cuda"):
                config.train.device = f"cuda:{index % gpus}"
            print(f"retraining {what} on the test protocol into {folder} ({jobs} at a time)")
            submitted[pool.submit(_train_final, config, folder, what, prefixes)] = what
        failures = []
        for future in as_completed(submitted):
            error = future.exception()
            if error is None:
                print(f"done: {submitted[future]}")
            else:
                failures.append(error)
    if failures:
        raise failures[0]
