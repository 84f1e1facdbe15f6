"""Ray start-up and the Tuner: searcher, ASHA on periods, callbacks, progress table, --resume."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from ray.tune.stopper import Stopper

from study.errors import UserError
from study.files import atomic_write_csv, atomic_write_text
from study.search_space import (
    SCHEDULE_KEY,
    SEED_KEY,
    SearchSpace,
)
from study.sweep.location import InStudyFolder, set_study_folder
from study.sweep.preflight import EXPERIMENT, USER_ERROR, check_resources
from study.sweep.progress import StudyProgress
from study.sweep.ray_private import quiet_restore_hint, quiet_token_notice
from study.sweep.searcher import make_searcher
from study.sweep.tables import StudyRecorder
from study.sweep.trial import CheckpointKeptOnce, TrialContext, run_trial
from study.sweep.wandb_runs import StudyWandb

# ASHA stops any trial at max_t periods: set far beyond any plan, so trials end with their own plan.
ASHA_MAX_PERIODS = 1000
TRIAL_RETRIES = 2  # restarts of a failed trial (a lost node, a killed worker) before it counts as an error
# Ray's memory monitor killing workers ends Tuner.fit with this in its message; the study resumes.
OUT_OF_MEMORY = "running low on memory"
MEMORY_RETRIES = 3


def run_study(
    space: SearchSpace,
    out: Path,
    address: str | None,
    restore: bool,
    mode: str,
    planned_epochs: int = 0,
    verbose: bool = False,
) -> list[str]:
    """Start or join Ray, run (or restore) the Tuner, and return every trial's status.

    The console shows the study's progress line (``study.sweep.progress``); ``verbose`` adds Tune's
    status table."""
    import ray

    started = not ray.is_initialized()
    scratch = out / ".tmp"
    set_study_folder(out)  # what Ray's pickle of a moved study is restored into
    (out / USER_ERROR).unlink(missing_ok=True)  # of an earlier run, fixed since
    if started:
        init_ray(address, scratch)
    stop_on_sigterm()
    try:
        check_resources(space.tune, [node["Resources"] for node in ray.nodes() if node["Alive"]])
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the CLIReporter table instead of Ray's new output
        # Keeping one checkpoint per trial snapshots the experiment at every period end; that is intended.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        quiet_restore_hint()  # the sweep prints the command that resumes it, with its --set options
        for attempt in range(MEMORY_RETRIES + 1):
            tuner = make_tuner(space, out, mode, restore or attempt > 0, planned_epochs, verbose)
            try:
                tuner.fit()
                break
            except RuntimeError as error:  # Ray's memory monitor killed trial workers: ends fit()
                if OUT_OF_MEMORY not in str(error) or attempt == MEMORY_RETRIES:
                    raise
                print(
                    f"Ray killed trial workers: the machine ran low on memory; resuming the study from "
                    f"their checkpoints ({attempt + 1} of {MEMORY_RETRIES}); if it recurs, lower "
                    "tune.max_concurrent or stop what else uses the memory",
                    flush=True,
                )
    finally:
        set_study_folder(None)
        if started:
            ray.shutdown()
            shutil.rmtree(scratch, ignore_errors=True)
    return mark_interrupted(out)


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler ending a job, ``kill``) stops the study as Ctrl-C does: Tune saves its state,
    the trials are marked interrupted and the resume command is printed, instead of Ray's abort.
    Set once Ray has started: ``ray.init`` installs a SIGTERM handler of its own that aborts."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda number, frame: signal.raise_signal(signal.SIGINT))


def mark_interrupted(out: Path) -> list[str]:
    """Mark trials that Ray's last snapshot holds unfinished as ``interrupted``; return every status.

    An interrupted sweep stops its running trials (so they look stopped); ``--resume`` continues them.
    """
    from ray.tune import ExperimentAnalysis

    if not (out / "results.csv").exists():
        return []
    saved = {t.trial_id: t.status for t in ExperimentAnalysis(str(out / EXPERIMENT)).trials}
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        unfinished = saved.get(row["trial_id"]) not in (None, "TERMINATED", "ERROR")
        if unfinished and row["status"] not in ("finished", "diverged"):
            row["status"] = "interrupted"
    atomic_write_csv(out / "results.csv", rows)
    return [row["status"] for row in rows]


def init_ray(address: str | None, scratch: Path) -> None:
    """Join ``address`` (or RAY_ADDRESS), or start a local Ray without its dashboard.

    Ray's workers get this project on PYTHONPATH and keep temporary files in ``scratch``: Ray kills
    them at the end, and W&B's temporary folders would otherwise pile up in /tmp.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    root = str(Path(__file__).resolve().parents[2])
    # The project, the working directory and PYTHONPATH: where plug-in schedules (module:Class) live.
    paths = [root, os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    scratch.mkdir(parents=True, exist_ok=True)
    env_vars = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "TMPDIR": str(scratch)}
    runtime_env = {"env_vars": env_vars}
    # Ray's token authentication stays on; its notice on every local start is noise for a local study.
    quiet_token_notice()
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env)
        else:
            ray.init(include_dashboard=False, runtime_env=runtime_env)
    except BaseException as error:
        shutil.rmtree(scratch, ignore_errors=True)
        if address and isinstance(error, ConnectionError | ValueError):  # e.g. the cluster just ended
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"cannot join the Ray cluster at {address}: {detail}") from None
        raise


def make_tuner(
    space: SearchSpace, out: Path, mode: str, restore: bool, planned_epochs: int = 0, verbose: bool = False
) -> Any:
    """A new Tuner (StudySearcher, ASHA on periods, W&B, the tables, the progress line), or a restored one."""
    from ray import tune

    context = TrialContext(space, str(out))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": space.tune.cpu, "gpu": space.tune.gpu}
    )
    if restore:
        path = str(out / EXPERIMENT)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    marker = yaml.safe_dump({"_name": space.name, **space.source}, sort_keys=False)
    atomic_write_text(out / "study.yaml", marker)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=space.tune.metric,
            mode=space.tune.mode,
            search_alg=make_searcher(space, out),
            scheduler=make_scheduler(space),
            num_samples=space.num_trials,
            max_concurrent_trials=space.tune.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(out),
            callbacks=[*make_callbacks(space, out, mode), StudyProgress(space, planned_epochs)],
            stop=StopOnUserError(out),
            progress_reporter=make_reporter(space) if verbose else None,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # A trial whose node is lost (or that fails) restarts from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
            verbose=1 if verbose else 0,  # 0: Tune prints no status table, only what goes wrong
        ),
    )


class StopOnUserError(InStudyFolder, Stopper):
    """Stop every trial once one ended in a UserError (bad data, a setting no trial can run with):
    each would fail the same way, retried. The sweep then exits with that one line."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return (self.out / USER_ERROR).exists()


def make_callbacks(space: SearchSpace, out: Path, mode: str) -> list:
    """The results tables, one copy of each checkpoint, and W&B unless it is disabled."""
    callbacks: list = [StudyRecorder(out, space), CheckpointKeptOnce(out)]
    if mode != "disabled":
        callbacks.append(StudyWandb(space, out, mode))
    return callbacks


def make_scheduler(space: SearchSpace) -> Any:
    """ASHA with time measured in completed periods (rungs on period ends), or FIFO."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    asha = space.tune.asha
    if asha is None:
        return FIFOScheduler()
    return AsyncHyperBandScheduler(
        time_attr="periods_done",
        max_t=ASHA_MAX_PERIODS,
        grace_period=asha.grace_periods,
        reduction_factor=asha.reduction_factor,
    )


def make_reporter(space: SearchSpace) -> Any:
    """Ray's CLIReporter with the schedule, the tuned values every schedule has (Ray fails on a
    column one trial lacks), epoch, periods, metric and loss."""
    from ray.tune import CLIReporter

    held_by_all = set.intersection(*({p.key for p in space.params_for(s)} for s in space.schedules))
    parameters = {
        key: "schedule" if key == SCHEDULE_KEY else key.removeprefix("schedule.")
        for key in space.tuned_keys()
        if key == SCHEDULE_KEY or key in held_by_all
    }
    if len(space.seeds) > 1:
        parameters[SEED_KEY] = "seed"
    metric = space.tune.metric
    return CLIReporter(
        parameter_columns=parameters,
        metric_columns={"epoch": "epoch", "periods_done": "periods", metric: metric, "loss": "loss"},
        sort_by_metric=True,
        max_report_frequency=30,
    )


def trial_dirname(trial: Any) -> str:
    """Ray's folder for a trial: its id."""
    return trial.trial_id
