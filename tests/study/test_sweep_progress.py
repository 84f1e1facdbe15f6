"""The sweep's console: the study-level progress line, and Tune's table only on request (no Ray run)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import study.search_space as search_space
import study.sweep.cli as sweep_cli
from study.sweep.progress import StudyProgress
from study.sweep.searcher import CONFIGURATION_KEY
from study.sweep.tuner import make_reporter

GRID = {
    "data": {"root": "synthetic"},
    "schedule": {"name": "incremental_rollback", "budget_epochs": 4, "period_epochs": 2},
    "search": {
        "schedules": ["finetune", "incremental_rollback", "base_cy"],
        "seeds": [0],
        "when": {
            "finetune": {"schedule.lr": {"choice": [0.005, 0.01]}, "schedule.epochs": 4},
            "incremental_rollback": {"schedule.retained_lr": {"choice": [1.0e-4, 1.0e-3]}},
        },
    },
    "tune": {"sampler": "grid", "max_concurrent": 2},
}


class Clock:
    """A clock the test moves: the line's ETA without waiting on real time."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(trial_id: str, schedule: str, configuration: int, status: str = "RUNNING"):
    config = {"schedule.name": schedule, CONFIGURATION_KEY: configuration}
    return SimpleNamespace(trial_id=trial_id, config=config, status=status)


def test_the_line_counts_trials_and_trained_epochs_and_estimates_the_end_from_the_rate(capsys):
    space = search_space.parse_search_space(GRID, "grid")
    clock = Clock()
    progress = StudyProgress(space, planned_epochs=15, every_s=60, clock=clock)
    a, b = trial("a", "finetune", 0), trial("b", "incremental_rollback", 2)
    trials = [a, b]
    progress.on_trial_result(0, trials, a, {"epoch": 1, "validated": True, "val_mAP": 0.05})
    assert capsys.readouterr().out == (
        "study grid: 0 finished, 2 running, 3 pending of 5 trials; 1 of 15 epochs (7 %); "
        "best val_mAP 5.00 % (#0 finetune)\n"
    )
    # b took epochs 1-2 from another trial's shared prefix: they are not trained again
    progress.on_trial_result(0, trials, b, {"epoch": 2, "shared_epochs": 2, "validated": False})
    clock.now += 60
    progress.on_trial_result(
        0, trials, b, {"epoch": 3, "shared_epochs": 2, "validated": True, "val_mAP": 0.1}
    )
    # 1 epoch trained in the 60 s since the first result: 13 left at 1 a minute
    assert capsys.readouterr().out == (
        "study grid: 0 finished, 2 running, 3 pending of 5 trials; 2 of 15 epochs (13 %); "
        "best val_mAP 10.00 % (#2 incremental_rollback); ETA 13 min\n"
    )
    clock.now += 1  # within the minute: no line, unless a trial ends
    progress.on_trial_result(0, trials, a, {"epoch": 2, "validated": False})
    assert capsys.readouterr().out == ""
    progress.on_trial_complete(0, trials, a)  # Tune still calls it RUNNING then
    assert capsys.readouterr().out.startswith(
        "study grid: 1 finished, 1 running, 3 pending of 5 trials; 3 of 15"
    )


def test_the_progress_survives_the_pickle_of_a_resumed_sweep_and_keeps_its_trials():
    space = search_space.parse_search_space(GRID, "grid")
    progress = StudyProgress(space, planned_epochs=15, every_s=0)
    a = trial("a", "finetune", 0)
    progress.on_trial_result(0, [a], a, {"epoch": 4, "validated": True, "val_mAP": 0.2})
    restored = pickle.loads(pickle.dumps(progress))
    restored.set_state(progress.get_state())
    assert restored.trained() == 4 and restored.start is None  # the ETA restarts with the session


def test_the_opening_lines_plan_a_grid_with_its_shared_prefixes_and_tpe_at_its_base_values(tmp_path):
    space = search_space.parse_search_space(GRID, "grid")
    lines, planned = sweep_cli.share_prefixes(space, tmp_path)
    # 2 finetune + 2 rollback + 1 base_cy (its base period length), 4 epochs each: the rollbacks and
    # base_cy share period 1 (2 epochs), fine-tuning at lr 0.01 epoch 1 (its LR steps after epoch 2)
    assert planned == 20 - 2 * 2 - 1
    assert lines[0] == "shared prefixes: 15 epochs to train instead of 20 (5 saved, 25 %)"
    tpe = search_space.parse_search_space({**GRID, "tune": {"num_samples": 3}}, "tpe")
    lines, planned = sweep_cli.share_prefixes(tpe, tmp_path)
    assert planned == 12 and lines == [
        "shared prefixes: taken as trials start (TPE samples configurations one by one)"
    ]


def test_tunes_table_shows_only_the_values_every_trial_holds():
    space = search_space.parse_search_space(GRID, "grid")
    columns = make_reporter(space)._parameter_columns
    assert columns == {"schedule.name": "schedule"}  # lr and retained_lr belong to one schedule each


def test_the_opening_memory_line_uses_the_trials_measured_peak_and_says_what_fits(tmp_path, monkeypatch):
    space = search_space.parse_search_space(GRID, "grid")
    base = search_space.config_from_dict(space.base)
    monkeypatch.setattr(sweep_cli, "available_mib", lambda: 4096.0)
    (tmp_path / "results.csv").write_text("trial_id,peak_host_mib\na,1536\nb,2048\nc,\n")
    assert sweep_cli.memory_line(space, base, tmp_path) == (
        "memory: a trial holds about 2.0 GiB (its peak so far, measured); 2 at once need about 4.0 of the "
        "4.0 GiB available here; set tune.max_concurrent to 1 or free memory (Ray stops workers at 95 %)"
    )
    monkeypatch.setattr(sweep_cli, "available_mib", lambda: 65536.0)
    assert sweep_cli.memory_line(space, base, tmp_path).endswith("of the 64.0 GiB available here")
