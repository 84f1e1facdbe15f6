"""Sweeps: search-space validation (no Ray), the trial's reporting, and one small real Ray Tune study."""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import runpy
import shlex
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import study.run_folder as run_folder
import study.search_space as search_space
import study.sweep.cli as sweep_cli
import study.sweep.preflight as sweep_preflight
import study.sweep.searcher as sweep_searcher
import study.sweep.tables as sweep_tables
import study.sweep.trial as sweep_trial
import study.sweep.tuner as sweep_tuner
from study.errors import UserError

# A small valid search space; each bad case below changes one thing in it.
VALID = {
    "schedule": {"name": "incremental_rollback", "periods": 2, "period_epochs": 1},
    "search": {
        "schedules": ["finetune", "incremental_rollback"],
        "seeds": [0, 1],
        "params": {
            "schedule.lr": {"loguniform": [1.0e-3, 1.0e-1]},
            "schedule.retained_lr": {"uniform": [1.0e-4, 1.0e-2]},
            "train.batch_size": {"choice": [16, 32]},
            "schedule.head_lr": 0.1,
        },
        "when": {"finetune": {"schedule.epochs": {"int": [1, 3]}}},
    },
    "tune": {"num_samples": 4, "resources": {"cpu": 1, "gpu": 0}, "asha": {"grace_periods": 2}},
}


def changed(path: str, value) -> dict:
    """VALID with the dotted ``path`` set to ``value`` (None deletes it)."""
    data = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return data


def params_with(key: str, spec) -> dict:
    data = copy.deepcopy(VALID)
    data["search"]["params"][key] = spec
    return data


BAD = [
    (changed("search.sedes", [0]), "unknown key search.sedes (did you mean 'seeds'?)"),
    (changed("tune.num_sample", 3), "unknown key tune.num_sample (did you mean 'num_samples'?)"),
    (
        params_with("schedule.lr", {"uniform": [0.1, 0.01]}),
        "search.params.schedule.lr: uniform needs low < high",
    ),
    (params_with("schedule.lr", {"loguniform": [0.0, 0.1]}), "loguniform needs bounds > 0, got [0.0, 0.1]"),
    (
        params_with("schedule.lr", {"unifrom": [0.1, 0.2]}),
        "unknown distribution 'unifrom' (did you mean 'uniform'?)",
    ),
    (params_with("schedule.periods", {"int": [1.5, 3]}), "int needs whole-number bounds"),
    (params_with("train.batch_size", {"choice": []}), "choice needs a non-empty list"),
    (params_with("train.batchsize", 16), "unknown config key 'train.batchsize' (did you mean 'batch_size'?)"),
    (params_with("trian.batch_size", 16), "unknown config key 'trian' (did you mean 'train'?)"),
    (params_with("data.synthetic", 3), "'data.synthetic' is a section"),
    (params_with("schedule.retaind_lr", 0.1), "has a parameter 'retaind_lr' (did you mean 'retained_lr'?)"),
    (params_with("schedule.name", "base_cy"), "list the compared schedules in search.schedules instead"),
    (params_with("train.seed", 3), "list the seeds in search.seeds instead"),
    (
        changed("search.schedules", ["finetune", "incremental_rolback"]),
        "unknown schedule 'incremental_rolback'",
    ),
    (changed("search.seeds", []), "search.seeds must be a non-empty list of integers"),
    (changed("search.when", {"base_cy": {"schedule.lr": 0.1}}), "unknown compared schedule 'base_cy'"),
    (
        changed("search.when", {"finetune": {"schedule.retained_lr": 0.1}}),
        "schedule 'finetune' has no parameter 'retained_lr'",
    ),
    (changed("search.when", {"finetune": {"schedule.lr": 0.1}}), "is also in search.params"),
    (changed("tune.metric", "val_map"), "unknown metric 'val_map' (did you mean 'val_mAP'?)"),
    (changed("model", {"backbone": "resnet5"}), "unknown backbone 'resnet5' (did you mean 'resnet50'?)"),
    (changed("tune.mode", "maximize"), "tune.mode must be max or min"),
    (changed("tune.num_samples", 1), "tune.num_samples=1 is fewer than the 2 compared schedules"),
    (changed("tune.resources", {"gpus": 1}), "unknown key tune.resources.gpus (did you mean 'gpu'?)"),
    (changed("tune.resources", {"gpu": 1.5}), "gpu above 1 must be a whole number"),
    (changed("tune.resources", {"cpu": 0}), "tune.resources.cpu must be a positive number"),
    (changed("tune.asha", {"reduction_factor": 1}), "reduction_factor must be a number > 1"),
    (
        params_with("train.batch_size", {"choice": [16, "big"]}),
        "train.batch_size must be an integer, got 'big'",
    ),
    (params_with("schedule.lr", {"uniform": [-0.1, 0.1]}), "schedule.lr=-0.1 with schedule finetune"),
    (changed("schedule.period_epochs", 0), "the base config with schedule incremental_rollback"),
    (
        changed("search.variants", {"keep_B3": {"name": "block_order", "retaind": [[], ["B3"]]}}),
        "keep_B3: schedule 'block_order' has no parameter 'retaind' (did you mean 'retained'?)",
    ),
    (
        changed("search.variants", {"keep_B3": {"retained": [[], ["B3"]]}}),
        "search.variants.keep_B3 must be a schedule section with a name",
    ),
    (
        changed("search.variants", {"base_cy": {"name": "incremental_rollback"}}),
        "search.variants.base_cy: 'base_cy' names a registered schedule",
    ),
    (
        changed("search.variants", {"keep_B3": {"name": "block_order", "retained": [[], ["B3"]]}}),
        "search.variants: keep_B3 not listed in search.schedules",
    ),
    (
        {
            **changed("search.schedules", ["finetune", "keep_B6"]),
            "search": {
                **VALID["search"],
                "schedules": ["finetune", "keep_B6"],
                "variants": {"keep_B6": {"name": "block_order", "retained": [[], ["B6"]]}},
            },
        },
        "the base config with schedule keep_B6",
    ),
    (  # ASHA's rung after period 1 would see no retained_lr: it acts from period 2
        changed("tune.asha", {"grace_periods": 1}),
        "tune.asha's first rung (the end of period 1, epoch 1 of incremental_rollback) comes before "
        "schedule.retained_lr acts (from epoch 2): set tune.asha.grace_periods to 2 or more",
    ),
    (  # period lengths searched under ASHA: its rungs would fall at unequal epochs
        params_with("schedule.period_epochs", {"choice": [1, 2]}),
        "tune.asha would compare trials at unequal budgets: the end of period 2 is epoch 2 for "
        "incremental_rollback but 4 for incremental_rollback with schedule.period_epochs=2; drop tune.asha",
    ),
    (  # fine-tuning's one period ends at its last epoch: a rung after period 1 compares budgets
        {
            **VALID,
            "tune": {**VALID["tune"], "asha": {"grace_periods": 1}},
            "search": {
                **VALID["search"],
                "params": {"schedule.lr": 0.01},
                "when": {"finetune": {"schedule.epochs": 4}},
            },
        },
        "the end of period 1 is epoch 4 for finetune but 1 for incremental_rollback",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_search_space_is_one_line_user_error(data, message):
    with pytest.raises(UserError) as error:
        search_space.parse_search_space(data, "bad")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_valid_search_space_drops_parameters_a_schedule_lacks():
    space = search_space.parse_search_space(copy.deepcopy(VALID), "ok")
    assert space.num_trials == 8
    finetune = [p.key for p in space.params_for("finetune")]
    rollback = [p.key for p in space.params_for("incremental_rollback")]
    assert "schedule.retained_lr" not in finetune and "schedule.epochs" in finetune
    assert "schedule.retained_lr" in rollback and "schedule.epochs" not in rollback
    assert space.tuned_keys() == [
        "schedule.name",
        "schedule.lr",
        "schedule.retained_lr",
        "train.batch_size",
        "schedule.epochs",
    ]


def test_run_config_switches_schedule_and_keeps_only_its_base_parameters():
    space = search_space.parse_search_space(copy.deepcopy(VALID), "ok")
    config = space.run_config(
        {"schedule.name": "finetune", "schedule.lr": 0.02, "schedule.epochs": 2, "train.seed": 1}
    )
    assert config.schedule == {"name": "finetune", "lr": 0.02, "epochs": 2}
    assert config.train.seed == 1 and config.train.progress is False
    config = space.run_config(
        {"schedule.name": "incremental_rollback", "train.batch_size": 32, "train.seed": 0}
    )
    assert config.schedule == {"name": "incremental_rollback", "periods": 2, "period_epochs": 1}
    assert config.train.batch_size == 32


def test_variants_are_compared_under_their_labels_with_their_own_parameters():
    data = copy.deepcopy(VALID)
    data["search"]["schedules"] = ["finetune", "keep_B3", "keep_B5"]
    data["search"]["variants"] = {
        "keep_B3": {"name": "block_order", "retained": [[], ["B3"]]},
        "keep_B5": {"name": "block_order", "retained": [[], ["B5"]], "period_epochs": 3},
    }
    data["search"]["when"]["keep_B5"] = {"schedule.gamma": 0.5}
    data["tune"]["num_samples"] = 3
    del data["tune"]["asha"]  # their periods differ in length: ASHA would compare unequal budgets
    space = search_space.parse_search_space(data, "variants")
    keep_b3 = space.run_config({"schedule.name": "keep_B3", "schedule.lr": 0.02, "train.seed": 0})
    # the base's period_epochs (block_order has it; periods it lacks), the variant's retained, the sampled lr
    expected = {"name": "block_order", "period_epochs": 1, "retained": [[], ["B3"]], "lr": 0.02}
    assert keep_b3.schedule == expected
    keep_b5 = space.run_config({"schedule.name": "keep_B5", "schedule.gamma": 0.5, "train.seed": 0})
    assert keep_b5.schedule["period_epochs"] == 3 and keep_b5.schedule["retained"] == [[], ["B5"]]
    assert [p.key for p in space.params_for("keep_B5")][-1] == "schedule.gamma"
    assert "schedule.retained_lr" in [p.key for p in space.params_for("keep_B3")]
    assert [sweep_searcher.schedule_of(space, c) for c in range(3)] == list(space.schedules)


def test_optuna_define_by_run_samples_only_the_schedules_parameters():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space.parse_search_space(copy.deepcopy(VALID), "ok")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for configuration in range(space.tune.num_samples):
        study.enqueue_trial({"schedule.name": sweep_searcher.schedule_of(space, configuration)})
    suggest = sweep_searcher.Suggest(space)
    seen = []
    for _ in range(4):
        trial = study.ask()
        fixed = suggest(trial)
        seen.append(trial.params["schedule.name"])
        assert fixed == {"schedule.head_lr": 0.1}
        if trial.params["schedule.name"] == "finetune":
            assert "schedule.retained_lr" not in trial.params and 1 <= trial.params["schedule.epochs"] <= 3
        else:
            assert (
                1e-4 <= trial.params["schedule.retained_lr"] <= 1e-2 and "schedule.epochs" not in trial.params
            )
        assert 1e-3 <= trial.params["schedule.lr"] <= 1e-1
    assert seen == ["finetune", "incremental_rollback"] * 2


def test_env_expansion_and_missing_variable(monkeypatch):
    monkeypatch.setenv("REID_TEST_ROOT", "/data/market")
    assert search_space.expand_env({"data": {"root": "${REID_TEST_ROOT}/v1"}}) == {
        "data": {"root": "/data/market/v1"}
    }
    monkeypatch.delenv("REID_TEST_ROOT")
    with pytest.raises(UserError, match=r"data.root uses \$\{REID_TEST_ROOT\}, which is not set; export"):
        search_space.expand_env({"data": {"root": "${REID_TEST_ROOT}"}})


def test_shipped_search_spaces_load(monkeypatch):
    folder = Path(__file__).resolve().parents[2] / "search_spaces"
    monkeypatch.delenv("MARKET1501_ROOT", raising=False)
    demo = search_space.load_search_space(folder / "demo.yaml")
    assert demo.schedules == ("finetune", "incremental_rollback", "base_cy")
    assert demo.base["model"]["weights"] == "packaged" and demo.tune.gpu == 0
    with pytest.raises(UserError, match="MARKET1501_ROOT"):
        search_space.load_search_space(folder / "periods.yaml")
    monkeypatch.setenv("MARKET1501_ROOT", "/data/Market-1501")
    periods = search_space.load_search_space(folder / "periods.yaml")
    assert periods.base["data"]["root"] == "/data/Market-1501" and periods.tune.gpu > 0
    assert periods.tune.asha is None  # tuning period length: no rung could compare equal budgets
    for period_epochs in (30, 40, 60):  # one budget whatever the period length
        config = periods.run_config({"schedule.period_epochs": period_epochs, "train.seed": 0})
        assert config.built_schedule.total_epochs == 120
    schedules = search_space.load_search_space(folder / "schedules.yaml")
    from schedules import registered

    assert set(schedules.schedules) == set(registered())
    budgets = sweep_cli.describe(schedules).split("epochs per trial: ")[1].split(", ")
    assert budgets == [f"{name} 40" for name in schedules.schedules]  # the same epoch budget each
    converged = search_space.load_search_space(folder / "cuhk03_converged.yaml")
    budgets = sweep_cli.describe(converged).split("epochs per trial: ")[1].split(", ")
    assert budgets == [f"{name} 120" for name in ("finetune", "incremental_rollback", "base_cy", "fc_warmup")]
    from study.config import load_config

    pilot = load_config(folder / "cuhk03_pilot.yaml")  # a run config: the rollback's first period alone
    assert pilot.schedule == {
        "name": "finetune",
        "epochs": 40,
        "decay_every": "half",
        "lr": 0.01,
        "head_lr": 0.1,
    }


def test_a_piece_of_a_study_drops_the_conditions_of_schedules_it_does_not_run(capsys):
    converged = Path(__file__).resolve().parents[2] / "search_spaces" / "cuhk03_converged.yaml"
    piece = search_space.load_search_space(
        converged,
        ["search.seeds=[0]", "search.schedules=[finetune,incremental_rollback]", "tune.num_samples=2"],
    )
    assert piece.schedules == ("finetune", "incremental_rollback") and piece.seeds == (0,)
    assert set(piece.when) == {"finetune"}
    assert "search.when of fc_warmup dropped: not compared" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown compared schedule 'fc_warmup'"):  # a --set of it: a mistake
        search_space.load_search_space(
            converged, ["search.schedules=[finetune]", "search.when.fc_warmup.schedule.epochs=105"]
        )


def test_missing_data_set_is_one_line_error(tmp_path):
    space = search_space.parse_search_space(changed("data", {"root": str(tmp_path / "Market-1501")}), "x")
    with pytest.raises(UserError, match="does not exist; download the data set there"):
        sweep_preflight.check_data(space, search_space.config_from_dict(space.base))


def test_the_preflight_checks_the_data_of_every_planned_configuration(tiny_base):
    # the base batch fits the tiny training set; one of the searched batch sizes does not
    data = {**tiny_base(), **copy.deepcopy(VALID)}
    data["search"]["params"]["train.batch_size"] = {"choice": [16, 100_000]}
    space = search_space.parse_search_space(data, "x")
    with pytest.raises(UserError, match="100000"):
        sweep_preflight.check_data(space, search_space.config_from_dict(space.base))


def test_resources_no_machine_has_are_refused():
    settings = search_space.TuneSettings(metric="val_mAP", cpu=1, gpu=1)
    with pytest.raises(UserError, match=r"gpu=1 per trial, but this Ray machine has 0 GPUs"):
        sweep_preflight.check_resources(settings, [{"CPU": 2.0}])
    two_small = [{"CPU": 2.0}, {"CPU": 2.0}]  # 4 CPUs in all, but a trial runs on one machine
    with pytest.raises(UserError, match=r"cpu=4 per trial, but the Ray cluster's largest machine has 2 CPUs"):
        sweep_preflight.check_resources(search_space.TuneSettings(metric="val_mAP", cpu=4), two_small)
    quarter_gpu = search_space.TuneSettings(metric="val_mAP", cpu=2, gpu=0.25)
    sweep_preflight.check_resources(quarter_gpu, [{"CPU": 2.0, "GPU": 1.0}])


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(params_with("schedule.lr", {"loguniform": [0.1, 0.01]})))
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: search.params.schedule.lr: loguniform needs low < high"
    )
    assert not (tmp_path / "out").exists()


def test_every_problem_before_ray_starts_is_reported_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = copy.deepcopy(VALID)
    space["data"] = {"root": str(tmp_path / "Market-1501")}  # not there
    space["model"] = {"backbone": "resnet18", "weights": str(tmp_path / "resnet18.pth")}  # not there
    space["tune"]["resources"] = {"cpu": 10_000, "gpu": 0}  # no machine has that
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(path), "--out", str(tmp_path / "out"), "--resume"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: 4 problems; the study starts once they are fixed:"
    assert [line.split(" ")[1] for line in lines[1:]] == [
        f"{tmp_path / 'out'}",  # holds no study to resume
        "tune.resources.cpu=10000",
        "data.root",
        "model.weights",
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_user_error_inside_a_trial_ends_the_sweep_with_that_one_line(
    tmp_path, tiny_base, capsys, monkeypatch
):
    import ray

    # what the preflight cannot see (here: it is told not to look at the data) a trial finds
    monkeypatch.setattr(sweep_preflight, "check_data", lambda space, config: None)
    space = {**tiny_base(), **copy.deepcopy(VALID), "wandb": {"mode": "disabled"}}
    del space["tune"]["asha"]
    space["search"]["params"] = {"schedule.lr": 0.01}
    space["train"]["batch_size"] = 100_000  # more than the training set: found when a trial loads it
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, logging_level="WARNING")
    try:
        with pytest.raises(SystemExit) as exit_info:
            sweep_cli.main([str(path), "--out", str(tmp_path / "out")])
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: the training set has ") and "fewer than train.batch_size=100000" in error


def test_a_study_folder_in_use_stays_locked_when_its_lock_file_is_deleted(tmp_path):
    with sweep_preflight.study_lock(tmp_path / "study"):
        (tmp_path / "study" / ".lock").unlink()
        second = pytest.raises(UserError, match=r"is in use by another python -m study\.sweep")
        with second, sweep_preflight.study_lock(tmp_path / "study"):
            pass
    with sweep_preflight.study_lock(tmp_path / "study"):  # free again once its holder ends
        pass


def test_study_folder_is_refused_unless_resuming_the_same_study(tmp_path):
    space = search_space.parse_search_space(copy.deepcopy(VALID), "ok")
    with pytest.raises(UserError, match="holds no study to resume"):
        sweep_preflight.check_study_dir(tmp_path, space, resume=True)
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(UserError, match="is not empty and holds no study"):
        sweep_preflight.check_study_dir(tmp_path, space, resume=False)
    (tmp_path / "other.txt").unlink()
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"_name": "ok", **space.source}))
    with pytest.raises(UserError, match="already holds the study 'ok'; pass --resume"):
        sweep_preflight.check_study_dir(tmp_path, space, resume=False)
    assert sweep_preflight.check_study_dir(tmp_path, space, resume=True) is False  # no Ray experiment yet
    other = search_space.parse_search_space(changed("tune.num_samples", 2), "ok")
    with pytest.raises(UserError, match="holds a different study \\(section tune differs\\)"):
        sweep_preflight.check_study_dir(tmp_path, other, resume=True)


class FakeTune:
    """Stands in for ray.tune in the reporter: records reports and the checkpoint folder's files."""

    def __init__(self):
        self.reports = []

    def report(self, metrics, checkpoint=None):
        files = sorted(p.name for p in Path(checkpoint.path).iterdir()) if checkpoint else None
        self.reports.append((metrics, files))


def test_reporter_carries_the_metric_forward_and_counts_periods(tmp_path, monkeypatch):
    import ray.tune

    from schedules import build_schedule

    fake = FakeTune()
    monkeypatch.setattr(ray.tune, "report", fake.report)
    plan = build_schedule({"name": "incremental_rollback", "periods": 2, "period_epochs": 2}).plan()
    run_dir = tmp_path / "trial"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv"):
        (run_dir / name).write_text("x")
    reporter = sweep_trial.EpochReporter(plan, search_space.TuneSettings(metric="val_mAP"), run_dir)
    for epoch, value in [(1, None), (2, 0.3), (3, None), (4, 0.5)]:
        record = {"epoch": epoch, "period": (epoch + 1) // 2, "loss": 1.0}
        if value is not None:
            record["val_mAP"] = value
        checkpoint = None
        if epoch % 2 == 0:
            checkpoint = run_dir / "checkpoints" / f"epoch-{epoch:04d}.pt"
            checkpoint.write_bytes(b"weights")
        reporter(record, checkpoint)
    metrics = [m for m, _ in fake.reports]
    assert [m["val_mAP"] for m in metrics] == [0.0, 0.3, 0.3, 0.5]
    assert [m["validated"] for m in metrics] == [False, True, False, True]
    assert [m["periods_done"] for m in metrics] == [0, 1, 1, 2]
    assert [files for _, files in fake.reports] == [
        None,
        ["config.yaml", "epoch-0002.pt", "metrics.csv"],
        None,
        ["config.yaml", "epoch-0004.pt", "metrics.csv"],
    ]
    assert list((run_dir / "checkpoints").iterdir()) == []  # once Tune holds a copy: kept once, there
    assert not (run_dir / ".to-tune").exists()

    reporter.report_divergence("training loss became nan in epoch 5")
    last = fake.reports[-1][0]
    assert last["diverged"] is True and last["val_mAP"] == 0.0 and math.isnan(last["loss"])


def test_asha_counts_periods_that_ended_early_and_a_short_run_is_finished(tmp_path, monkeypatch):
    import ray.tune

    from schedules import build_schedule

    fake = FakeTune()
    monkeypatch.setattr(ray.tune, "report", fake.report)
    spec = {"name": "plateau_rollback", "periods": 2, "period_epochs": 4, "patience": 1}
    plan = build_schedule(spec).plan()
    run_dir = tmp_path / "trial"
    reporter = sweep_trial.EpochReporter(plan, search_space.TuneSettings(metric="val_mAP"), run_dir)
    # both periods ended on a plateau after 2 of their 4 epochs, as the trainer's period_end says
    for epoch, period, end in [(1, 1, 0), (2, 1, 1), (3, 2, 0)]:
        reporter({"epoch": epoch, "period": period, "period_end": end, "loss": 1.0, "val_mAP": 0.1}, None)
    reporter.report_divergence("training loss became nan in epoch 4")
    diverged = fake.reports.pop()[0]
    assert (diverged["epoch"], diverged["period"], diverged["periods_done"]) == (4, 2, 1)
    reporter({"epoch": 4, "period": 2, "period_end": 1, "loss": 1.0, "val_mAP": 0.1}, None)
    metrics = [m for m, _ in fake.reports]
    assert [m["periods_done"] for m in metrics] == [0, 1, 1, 2]
    # the maximum plan until the run is over, then the epochs it took: the trial is not "stopped"
    assert [m["epochs_planned"] for m in metrics] == [8, 8, 8, 4]
    assert sweep_tables.trial_status("TERMINATED", metrics) == "finished"


def test_trial_summary_keeps_the_peak_gpu_memory_for_choosing_fractions():
    rows = [
        {"epoch": 1, "loss": 4.0, "seconds": 2.0, "val_mAP": None, "peak_gpu_mib": 900.0},
        {"epoch": 2, "loss": 3.0, "seconds": 3.0, "val_mAP": 0.2, "peak_gpu_mib": 1200.0},
    ]
    summary = sweep_tables.trial_summary(rows, "val")
    assert summary["peak_gpu_mib"] == 1200.0 and summary["train_seconds"] == 5.0
    assert summary["best_val_mAP"] == 0.2 and summary["best_epoch"] == 2
    cpu_rows = [{k: v for k, v in row.items() if k != "peak_gpu_mib"} for row in rows]
    assert sweep_tables.trial_summary(cpu_rows, "val")["peak_gpu_mib"] is None


def test_a_study_with_failed_trials_exits_1(tmp_path, tiny_base, monkeypatch, capsys):
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(tiny_base() | yaml.safe_load(TINY_STUDY)))
    statuses = ["finished", "error", "diverged", "finished", "diverged", "diverged"]
    monkeypatch.setattr(sweep_tuner, "run_study", lambda *args: statuses)
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(space), "--out", str(tmp_path / "study"), "--set", "wandb.mode=disabled"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "6 trials: 2 finished, 1 error, 3 diverged" in out
    assert f"1 trial(s) failed; their errors are in {tmp_path / 'study'}/tune/*/error.txt" in out


def test_trial_status():
    assert sweep_tables.trial_status("TERMINATED", [{"epochs_planned": 2}] * 2) == "finished"
    assert sweep_tables.trial_status("TERMINATED", [{"epochs_planned": 4}] * 2) == "stopped"
    assert sweep_tables.trial_status("TERMINATED", [{"epochs_planned": 4}, {"diverged": True}]) == "diverged"
    assert sweep_tables.trial_status("ERROR", [{"epochs_planned": 4}]) == "error"
    assert sweep_tables.trial_status("PENDING", []) == "pending"


# ----------------------------------------------------------------------------- one real study

# The tiny run's model, data and train sections (tiny_base) with these: a grid (the sweeps of
# test_sweep_reliability.py run TPE).
TINY_STUDY = """
schedule: {name: incremental_rollback, periods: 2, period_epochs: 1}
wandb: {mode: offline, project: rollback-study-tests}
search:
  schedules: [finetune, keep_B1]
  variants:
    keep_B1: {name: block_order, retained: [[], [B1]]}   # Table 1's "Block1"
  seeds: [0, 1]
  when:   # finetune diverges in its first epoch, at either lr
    finetune: {schedule.epochs: 1, schedule.head_lr: 1.0e+6, schedule.lr: {choice: [5.0e-3, 2.0e-2]}}
    keep_B1: {schedule.lr: 1.0e-2}
tune:
  sampler: grid   # finetune at each lr, then keep_B1: 3 configurations x 2 seeds
  max_concurrent: 2
  resources: {cpu: 1, gpu: 0}
  asha: {grace_periods: 1, reduction_factor: 2}
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, tiny_base):
    """Run the tiny study once (Ray local on 2 CPUs, W&B offline, everything under tmp)."""
    import ray

    tmp = tmp_path_factory.mktemp("sweep")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    space = tmp / "tiny.yaml"
    space.write_text(yaml.safe_dump(tiny_base() | yaml.safe_load(TINY_STUDY)))
    out = tmp / "study"
    cwd_before = set(os.listdir("."))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("TMPDIR", str(tmp))  # Ray's workers inherit it: W&B's temporary folders land here
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(name, str(tmp / name.lower()))
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, logging_level="WARNING")
        try:
            sweep_cli.main([str(space), "--out", str(out)])
            yield out, space
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert set(os.listdir(".")) == cwd_before  # nothing written into the working directory


def _csv(path):
    with open(path) as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_results_csv_has_one_row_per_trial_with_statuses(study_dir):
    out, _ = study_dir
    rows = _csv(out / "results.csv")
    assert len(rows) == 6
    for column in (
        "trial_id",
        "schedule",
        "schedule.lr",
        "schedule.epochs",
        "schedule.head_lr",
        "seed",
        "status",
    ):
        assert column in rows[0]
    for column in ("epochs", "best_val_mAP", "best_val_rank1", "final_val_mAP", "final_val_rank1"):
        assert column in rows[0]
    by_schedule = {s: [r for r in rows if r["schedule"] == s] for s in ("finetune", "keep_B1")}
    # the grid: finetune at each lr, keep_B1 at its one, each once per seed
    assert sorted((r["schedule.lr"], r["seed"]) for r in by_schedule["finetune"]) == [
        ("0.005", "0"),
        ("0.005", "1"),
        ("0.02", "0"),
        ("0.02", "1"),
    ]
    assert sorted((r["schedule.lr"], r["seed"]) for r in by_schedule["keep_B1"]) == [
        ("0.01", "0"),
        ("0.01", "1"),
    ]
    for row in by_schedule["finetune"]:
        assert row["status"] == "diverged" and row["epochs"] == "0" and row["best_val_mAP"] == ""
        assert row["schedule.head_lr"] == "1000000.0"
    for row in by_schedule["keep_B1"]:
        assert row["status"] in ("finished", "stopped")  # ASHA may stop the worse seed after period 1
        assert row["schedule.epochs"] == "" and 0 <= float(row["best_val_mAP"]) <= 1
    assert any(r["status"] == "finished" and r["epochs"] == "2" for r in by_schedule["keep_B1"])
    for row in by_schedule["keep_B1"]:  # one CPU per trial: Ray gives each worker one torch thread
        assert row["threads"] == "1" and row["cpu_model"] and row["torch_version"] == str(torch.__version__)
    for row in by_schedule["keep_B1"]:  # the variant's label in the tables, its schedule in the run
        config = yaml.safe_load((out / "trials" / row["trial_id"] / "config.yaml").read_text())
        assert config["schedule"]["name"] == "block_order" and config["schedule"]["retained"] == [[], ["B1"]]


@pytest.mark.slow
def test_epochs_csv_has_one_row_per_trial_and_epoch(study_dir):
    out, _ = study_dir
    results = {r["trial_id"]: r for r in _csv(out / "results.csv")}
    epochs = _csv(out / "epochs.csv")
    for trial_id, result in results.items():
        rows = [r for r in epochs if r["trial_id"] == trial_id]
        diverged = result["status"] == "diverged"
        assert len(rows) == int(result["epochs"]) + diverged
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        for row in rows:
            assert (row["val_mAP"] != "") == (row["validated"] == "True")
            if row["diverged"] == "False":
                assert float(row["lr_head"]) > 0 and float(row["grad_norm_B1"]) >= 0
        if result["status"] == "finished":
            assert [r["periods_done"] for r in rows] == ["1", "2"]
    assert {"lr_B1", "lr_B5", "lr_head", "grad_norm_B3", "grad_norm_head", "loss", "val_rank1"} <= set(
        epochs[0]
    )
    assert "threads" not in epochs[0] and "cpu_model" not in epochs[0]  # a trial's, in results.csv


@pytest.mark.slow
def test_optuna_db_holds_one_trial_per_configuration(study_dir):
    out, _ = study_dir
    import optuna

    with sqlite3.connect(out / "optuna.db") as db:
        (study_name,) = db.execute("SELECT study_name FROM studies").fetchone()
    assert study_name == "tiny"
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}").get_trials()
    # finetune's configurations diverged (FAIL: no value to learn from); keep_B1's completed, or is
    # PRUNED when ASHA stopped one of its seeds (which depends on the order results arrive in).
    stopped = any(r["status"] == "stopped" for r in _csv(out / "results.csv"))
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "PRUNED" if stopped else "COMPLETE"]
    assert [t.params for t in trials] == [  # the grid's points, in order, as Optuna recorded them
        {"schedule.name": "finetune", "schedule.lr": 5.0e-3},
        {"schedule.name": "finetune", "schedule.lr": 2.0e-2},
        {"schedule.name": "keep_B1"},
    ]
    # every validated epoch is an intermediate value: the mean over the seeds that reached it
    keep_b1 = [r for r in _csv(out / "epochs.csv") if r["schedule"] == "keep_B1" and r["validated"] == "True"]
    by_epoch = {}
    for row in keep_b1:
        by_epoch.setdefault(int(row["epoch"]), []).append(float(row["val_mAP"]))
    expected = {epoch: pytest.approx(sum(v) / len(v)) for epoch, v in by_epoch.items()}
    assert by_epoch and trials[2].intermediate_values == expected
    assert {"val_mAP seed 0", "val_mAP seed 1"} <= set(trials[2].user_attrs)


@pytest.mark.slow
def test_wandb_offline_runs_hold_each_trials_config(study_dir):
    out, _ = study_dir
    results = _csv(out / "results.csv")
    runs = {p.name.rsplit("-", 1)[-1]: p for p in (out / "wandb").glob("offline-run-*")}
    assert set(runs) == {r["trial_id"] for r in results}
    for row in results:
        log = (runs[row["trial_id"]] / f"run-{row['trial_id']}.wandb").read_bytes()
        config = yaml.safe_load((out / "trials" / row["trial_id"] / "config.yaml").read_text())
        texts = (  # the whole run config, its sections as JSON, with the label compared and the seed
            "label",
            f'"{row["schedule"]}"',
            f'"name":"{config["schedule"]["name"]}"',
            f'"seed":{row["seed"]}',
            '"backbone":"mobilenet_v2"',
            '"val_identities":6',
            "rollback-study-tests",
            "tiny",
            "val_mAP",
        )
        for text in texts:
            assert text.encode() in log
        assert b"__trial_index__" not in log
        assert (b"period_end" in log) == (row["status"] != "diverged")  # period boundaries, per epoch


@pytest.mark.slow
def test_each_trial_keeps_its_last_checkpoint_once_in_tunes_folder(study_dir):
    out, _ = study_dir
    for row in _csv(out / "results.csv"):
        folder = out / row["run_dir"]
        assert (folder / "config.yaml").exists()
        assert list(folder.rglob("*.pt")) == []
        if row["status"] != "diverged":  # a trial diverging in its first epoch has no metrics yet
            assert (folder / "metrics.csv").exists()
            (checkpoint,) = (out / "tune" / row["trial_id"]).glob("checkpoint_*/epoch-*.pt")
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
            assert saved["epoch"] == int(row["epochs"]) == run_folder.checkpoint_epoch(checkpoint)
        if row["status"] == "diverged":  # the trainer's summary says so too
            assert json.loads((folder / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_same_folder_again_is_refused_without_resume(study_dir, capsys):
    out, space = study_dir
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(space), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "already holds the study 'tiny'; pass --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_report_on_the_study(study_dir):
    from study.report import cli

    out, _ = study_dir
    cli.main([str(out)])
    text = (out / "report.md").read_text()
    assert "| schedule | best val mAP | best val rank-1 |" in text
    assert "| keep_B1 |" in text and "| finetune | – |" in text
    assert "4 diverged" in text
    for name in ("val_mAP.png", "loss.png", "grad_norm.png"):
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
        assert f"plots/{name}" in text


@pytest.mark.slow
def test_resume_of_a_finished_study_keeps_its_results(study_dir):
    out, space = study_dir
    before = _csv(out / "results.csv")
    sweep_cli.main([str(space), "--out", str(out), "--resume"])
    after = _csv(out / "results.csv")
    assert [(r["trial_id"], r["status"], r["epochs"]) for r in after] == [
        (r["trial_id"], r["status"], r["epochs"]) for r in before
    ]


def test_workers_killed_for_low_memory_resume_the_study_from_their_checkpoints(tmp_path, monkeypatch, capsys):
    import ray

    fits = iter(
        [
            RuntimeError(
                "Caught unexpected exception: 2 worker(s) were killed due to the node running low on memory"
            ),
            None,
            None,
        ]
    )
    restored = []

    class Tuner:
        def fit(self):
            if (error := next(fits)) is not None:
                raise error

    def make_tuner(space, out, mode, restore, *console):
        restored.append(restore)
        return Tuner()

    monkeypatch.setattr(sweep_tuner, "make_tuner", make_tuner)
    monkeypatch.setattr(sweep_tuner, "check_resources", lambda *args: None)
    monkeypatch.setattr(sweep_tuner, "mark_interrupted", lambda out: ["finished"])
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # joined: nothing to start or shut down
    monkeypatch.setattr(ray, "nodes", lambda: [])
    space = search_space.parse_search_space(copy.deepcopy(VALID), "ok")
    assert sweep_tuner.run_study(space, tmp_path, None, False, "disabled") == ["finished"]
    assert restored == [False, True]  # started, then resumed from the trials' checkpoints
    assert "Ray killed trial workers: the machine ran low on memory; resuming" in capsys.readouterr().out
    fits = iter([RuntimeError("something else")])
    with pytest.raises(RuntimeError, match="something else"):  # not retried
        sweep_tuner.run_study(space, tmp_path, None, False, "disabled")


def test_the_resume_hint_of_an_interrupted_study_continues_it(tmp_path, tiny_base, monkeypatch, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**tiny_base(), **copy.deepcopy(VALID), "wandb": {"mode": "disabled"}}))
    out = tmp_path / "study"
    statuses = iter([["finished", "interrupted"], ["finished"] * 4])

    def run_study(space, out, address, restore, mode, *console):
        marker = yaml.safe_dump({"_name": space.name, **space.source})
        (out / "study.yaml").write_text(marker)  # as the Tuner's start does
        return next(statuses)

    monkeypatch.setattr(sweep_tuner, "run_study", run_study)
    sets = ["tune.num_samples=2", "search.seeds=[0, 1]"]
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(path), "--out", str(out), *[w for s in sets for w in ("--set", s)]])
    assert exit_info.value.code == 130
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint.startswith("interrupted; continue with: python -m study.sweep ")
    words = shlex.split(hint.split(": ", 1)[1])
    options = ["--set", sets[0], "--set", sets[1], "--resume"]
    assert words[3:] == [str(path), "--out", str(out.resolve()), *options]
    sweep_cli.main(words[3:])  # the same study: not "holds a different study"
    assert "4 trials: 4 finished" in capsys.readouterr().out


def test_rays_own_restore_hint_is_dropped_and_its_other_warnings_kept(caplog):
    from study.sweep import ray_private

    ray_private.quiet_restore_hint()
    tune_logger = logging.getLogger(ray_private.TUNE_LOGGER)
    with caplog.at_level(logging.WARNING, logger=ray_private.TUNE_LOGGER):
        tune_logger.warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            'Resume experiment with: Tuner.restore(path="/x/tune", trainable=...)'
        )
        tune_logger.warning("Trials did not complete: [t1]")
    assert [r.getMessage() for r in caplog.records] == ["Trials did not complete: [t1]"]


def test_python_dash_m_study_sweep_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["python -m study.sweep", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("study.sweep", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m study.sweep [-h] [--out OUT]")
