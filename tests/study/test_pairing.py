"""Exact pairing: what a run records of its environment, which runs share epochs by construction,
and that runs sharing them compute the same bits (in one process, one sweep and two sweeps)."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from study import trainer
from study.config import config_from_dict
from study.pairing import environment_differences, evaluation_due, first_difference, shared_epochs
from study.provenance import ENVIRONMENT_KEYS, code_commit, cpu_model, environment_of, run_environment


def run(schedule: dict, **sections: dict):
    return config_from_dict({"data": {"root": "synthetic"}, "schedule": schedule, **sections})


ROLLBACK = {"name": "incremental_rollback", "periods": 3, "period_epochs": 2}
BASE_CY = {"name": "base_cy", "periods": 3, "period_epochs": 2}


def test_rollback_and_its_control_share_their_first_period_and_nothing_else_differs():
    assert shared_epochs(run(ROLLBACK), run(BASE_CY)) == 2
    assert shared_epochs(run(ROLLBACK), run(ROLLBACK)) == 6
    # Table 1's variants: period 1 too, and period 2 where they keep what the rollback keeps (B1)
    keep_b1_b2 = {"name": "block_order", "retained": [[], ["B1", "B2"], ["B1", "B2"]], "period_epochs": 2}
    assert shared_epochs(run(ROLLBACK), run(keep_b1_b2)) == 2
    keep_b1 = {"name": "block_order", "retained": [[], ["B1"], ["B1"]], "period_epochs": 2}
    assert shared_epochs(run(ROLLBACK), run(keep_b1)) == 4


@pytest.mark.parametrize(
    "other",
    [
        {"train": {"seed": 1}},
        {"data": {"root": "synthetic", "height": 128}},
        {"train": {"batch_size": 16}},
    ],
    ids=["seed", "data", "batch"],
)
def test_runs_that_differ_outside_the_schedule_share_no_epoch(other):
    assert shared_epochs(run(ROLLBACK), run(BASE_CY, **other)) == 0


def test_where_and_how_often_a_run_evaluates_decides_what_is_shared():
    # the device and progress bar change no number; evaluating at other epochs does (BatchNorm, RNG)
    assert shared_epochs(run(ROLLBACK), run(BASE_CY, train={"device": "cpu", "progress": False})) == 2
    assert shared_epochs(run(ROLLBACK, train={"eval_every": 1}), run(BASE_CY)) == 0
    other_lr = {**BASE_CY, "lr": 0.02}
    assert shared_epochs(run(ROLLBACK), run(other_lr)) == 0


def test_a_period_that_may_end_early_is_shared_only_to_its_first_possible_end():
    plateau = {"name": "plateau_rollback", "periods": 2, "period_epochs": 4, "patience": 1}
    assert shared_epochs(run(plateau), run(plateau)) == 1  # what follows depends on the metrics


def test_evaluation_is_due_at_period_ends_every_n_epochs_and_at_the_end():
    plan = run(ROLLBACK).built_schedule.plan()
    assert [evaluation_due(step, 0, len(plan)) for step in plan] == [False, True] * 3
    assert [evaluation_due(step, 3, len(plan)) for step in plan] == [False, True, True, True, False, True]


def test_the_first_difference_ignores_measured_times():
    a = [{"epoch": 1, "loss": 2.5, "seconds": 3.0, "val_mAP": float("nan")}, {"epoch": 2, "loss": 2.0}]
    b = [{"epoch": 1, "loss": 2.5, "seconds": 9.0, "val_mAP": None}, {"epoch": 2, "loss": 2.0000001}]
    assert first_difference(a, b, through=1) is None
    assert first_difference(a, b, through=2) == 2
    assert first_difference(a, [{**b[0], "loss": 2.4}], through=2) == 1


def test_environment_differences_name_what_keeps_two_runs_from_matching():
    here = {"threads": 1, "cpu_model": "AMD EPYC (AVX512)", "gpu_model": "", "torch_version": "2.15.0"}
    assert environment_differences(here, dict(here, commit="abc")) == []
    amx = dict(here, cpu_model="Intel Xeon (AVX512, AMX)", threads=2.0)
    assert environment_differences(here, amx) == [
        "threads 1 vs 2",
        "cpu model AMD EPYC (AVX512) vs Intel Xeon (AVX512, AMX)",
    ]
    assert environment_differences(here, {"threads": None}) == ["not recorded"]


def test_the_environment_names_threads_processor_torch_and_commit():
    environment = run_environment(torch.device("cpu"))
    assert tuple(environment) == ENVIRONMENT_KEYS
    assert environment["threads"] == torch.get_num_threads() and environment["gpu_model"] == ""
    assert environment["torch_version"] == torch.__version__
    assert cpu_model().endswith(")") and torch.backends.cpu.get_cpu_capability() in cpu_model()
    assert re.fullmatch(r"[0-9a-f]{12}(\+dirty)?|rollback-study .+", code_commit())
    assert environment_of([{"threads": 1}, {"threads": 1}, {"threads": 2}])["threads"] == "1 + 2"


def test_a_run_records_its_environment_in_every_epoch_and_its_summary(tmp_path, tiny_config):
    config = tiny_config({"name": "finetune", "epochs": 1}, train={"threads": 1})
    trainer.train_run(config, tmp_path)
    with open(tmp_path / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    summary = json.loads((tmp_path / "summary.json").read_text())
    for found in (rows[0], summary):
        assert str(found["threads"]) == "1" and found["cpu_model"] == cpu_model()
        assert found["torch_version"] == torch.__version__ and found["commit"] == code_commit()


def test_runs_planned_alike_compute_the_same_bits_until_their_plans_part(tmp_path, tiny_config):
    schedules = {"base_cy": {**BASE_CY, "periods": 2, "period_epochs": 1}}
    schedules["incremental_rollback"] = {**schedules["base_cy"], "name": "incremental_rollback"}
    rows = {}
    for name, schedule in schedules.items():
        config = tiny_config(schedule, train={"threads": 1, "seed": 3})
        trainer.train_run(config, tmp_path / name)
        with open(tmp_path / name / "metrics.csv") as file:
            rows[name] = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(file)]
    base_cy, rollback = rows["base_cy"], rows["incremental_rollback"]
    assert first_difference(base_cy, rollback, through=1) is None
    assert first_difference(base_cy, rollback, through=2) == 2  # B2-B5 rolled back after period 1


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


# ----------------------------------------------------------------------------- the report's pairing

HERE = {
    "threads": 1,
    "cpu_model": "AMD EPYC (AVX512)",
    "gpu_model": "",
    "torch_version": "2.15.0",
    "commit": "c0",
}


def write_paired_study(folder, tiny_base):
    """finetune, base_cy and incremental_rollback on seeds 0 and 1; base_cy's seed 1 ran at 2 threads
    (its numbers differ from epoch 1), base_cy's seed 0 shares the rollback's period 1 exactly."""
    import yaml

    from study.files import atomic_write_csv

    saved = {
        "_name": "pairs",
        **tiny_base(),
        "schedule": {"name": "incremental_rollback", "periods": 2, "period_epochs": 1},
        "search": {
            "schedules": ["finetune", "base_cy", "incremental_rollback"],
            "seeds": [0, 1],
            "when": {"finetune": {"schedule.epochs": 2}},
        },
        "tune": {"num_samples": 3},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(saved))
    losses = {  # (schedule, seed): loss at epochs 1 and 2
        ("finetune", 0): [3.0, 2.0],
        ("finetune", 1): [3.1, 2.1],
        ("base_cy", 0): [3.5, 2.5],
        ("base_cy", 1): [3.7, 2.6],
        ("incremental_rollback", 0): [3.5, 2.4],
        ("incremental_rollback", 1): [3.6, 2.3],
    }
    results, epochs = [], []
    for (schedule, seed), curve in losses.items():
        trial_id = f"{schedule[:2]}{seed}"
        environment = dict(HERE, threads=2) if (schedule, seed) == ("base_cy", 1) else HERE
        final = 0.2 + 0.01 * seed + (0.05 if schedule == "incremental_rollback" else 0.0)
        results.append(
            {
                "trial_id": trial_id,
                "schedule": schedule,
                "schedule.epochs": 2 if schedule == "finetune" else None,
            }
            | {
                "seed": seed,
                "status": "finished",
                "epochs": 2,
                "best_val_mAP": final,
                "best_val_rank1": final,
            }
            | {"final_val_mAP": final, **environment}
        )
        for epoch, loss in enumerate(curve, start=1):
            row = {"trial_id": trial_id, "schedule": schedule, "seed": seed, "epoch": epoch, "period": epoch}
            epochs.append(
                row
                | {
                    "validated": True,
                    "loss": loss,
                    "val_mAP": final if epoch == 2 else 0.1,
                    "seconds": 1.0 + seed + epoch,
                    "images_per_second": 1600.0 / (1.0 + seed + epoch),  # 1600 images: 100 steps
                    "drift_B1": 0.1,
                    "drift_B5": 0.2,
                }
            )
    atomic_write_csv(folder / "results.csv", results)
    atomic_write_csv(folder / "epochs.csv", epochs)


def test_the_report_calls_pairs_exact_paired_or_seed_matched_and_flags_mixed_threads(tmp_path, tiny_base):
    from study.report import loading, statistics, tables

    write_paired_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    verdict = "\n".join(tables.verdict(study))
    assert "**incremental_rollback**" in verdict and "paired (same seeds, same environment)" in verdict
    assert "**base_cy**" in verdict and "not exactly paired: seed 1: threads 2 vs 1" in verdict
    pairs = "\n".join(tables.pairs_section(study))
    assert "1 of 2 such pairs do" in pairs
    assert (
        "| incremental_rollback / base_cy | 0 | 1 | – | exactly paired: identical through epoch 1 | same |"
        in pairs
    )
    assert (
        "| 1 | 1 | – | not paired: numbers differ from epoch 1 (planned alike through 1) | threads 1 vs 2 |"
        in pairs
    )
    caveats = "\n".join(statistics.caveats(study))
    assert "ran in different environments: `threads` 1 (5 trials), 2 (1 trials)" in caveats


def test_a_study_that_recorded_no_environment_is_unverified_unless_its_numbers_agree(tmp_path, tiny_base):
    import pandas as pd

    from study.report import loading, statistics, tables

    write_paired_study(tmp_path, tiny_base)
    results = pd.read_csv(tmp_path / "results.csv").drop(columns=list(HERE))
    results.to_csv(tmp_path / "results.csv", index=False)
    study = loading.load_study(tmp_path)
    verdict = "\n".join(tables.verdict(study))
    assert "**incremental_rollback**" in verdict and "pairing unverified: no environment recorded" in verdict
    assert "exactly paired: identical through epoch 1 | not recorded |" in "\n".join(
        tables.pairs_section(study)
    )
    assert "No trial recorded its environment" in "\n".join(statistics.caveats(study))


def test_a_checkpoint_with_the_environment_in_its_history_loads_safely(tmp_path, tiny_config):
    config = tiny_config({"name": "finetune", "epochs": 1}, train={"threads": 1})
    trainer.train_run(config, tmp_path)
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.pt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert type(saved["history"][-1]["torch_version"]) is str


# ----------------------------------------------------------------------------- within and across sweeps

SWEEP = {
    "schedule": {"name": "incremental_rollback", "periods": 2, "period_epochs": 1},
    "wandb": {"mode": "disabled"},
    "search": {"schedules": ["base_cy", "incremental_rollback"], "seeds": [0]},
    "tune": {"sampler": "grid", "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0}},
}


@pytest.mark.slow
def test_runs_planned_alike_share_their_prefix_in_one_sweep_and_repeat_it_bit_for_bit_in_another(
    tmp_path, tiny_base, capsys
):
    import shutil
    import tempfile

    import pandas as pd
    import ray
    import yaml

    import study.sweep.cli as sweep_cli
    from study.report import loading, tables

    both, alone = tmp_path / "both.yaml", tmp_path / "alone.yaml"
    both.write_text(yaml.safe_dump(tiny_base() | SWEEP))
    only_rollback = {"schedules": ["incremental_rollback"], "seeds": [0]}
    alone.write_text(yaml.safe_dump(tiny_base() | SWEEP | {"search": only_rollback}))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path))
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, logging_level="WARNING")
        try:
            sweep_cli.main([str(both), "--out", str(tmp_path / "both")])
            sweep_cli.main([str(alone), "--out", str(tmp_path / "alone")])
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)

    def runs(folder):
        epochs = pd.read_csv(tmp_path / folder / "epochs.csv")
        return {schedule: rows.to_dict("records") for schedule, rows in epochs.groupby("schedule")}

    output = capsys.readouterr().out
    assert "shared prefixes: 3 epochs to train instead of 4 (1 saved, 25 %)" in output
    assert "  epochs 1-1: #0 base_cy, #1 incremental_rollback" in output
    trials = pd.read_csv(tmp_path / "both" / "results.csv").set_index("schedule")
    taker = trials[trials["shared_epochs"] == 1]  # period 1 trained once, by the other trial
    assert len(taker) == 1 and taker["shared_with"].iloc[0] == trials.drop(taker.index)["trial_id"].iloc[0]

    both_runs, alone_runs = runs("both"), runs("alone")
    base_cy, rollback = both_runs["base_cy"], both_runs["incremental_rollback"]
    assert len(base_cy) == len(rollback) == 2
    assert first_difference(base_cy, rollback, through=1) is None
    assert first_difference(base_cy, rollback, through=2) == 2
    # the other sweep trains the rollback alone: the same bits, with or without the shared prefix
    assert first_difference(rollback, alone_runs["incremental_rollback"], through=2) is None
    pairs = "\n".join(tables.pairs_section(loading.load_study(tmp_path / "both")))
    expected = "| 0 | 1 | 1 | exactly paired: epochs 1-1 trained once for both, identical through 1 | same |"
    assert "_rollback" in pairs and expected in pairs


def test_the_drift_table_gives_each_blocks_summed_rate_since_its_reset_and_what_decay_alone_gives(
    tmp_path, tiny_base
):
    from study.report import curves, loading

    write_paired_study(tmp_path, tiny_base)
    table = "\n".join(curves.drift_table(loading.load_study(tmp_path)))
    # 100 steps an epoch at lr 0.01: 1 - exp(-5e-4 / 0.1 * 0.02 * 100) = 0.995 %
    assert "| finetune | 2 | 0.02 / 1.0 | 0.02 / 1.0 |" in table
    # the rollback keeps B1 (0.01, then its retained 0.001) and restores B5 after epoch 1
    assert "| incremental_rollback | 2 | 0.011 / 0.5 | 0.01 / 0.5 |" in table
    assert "| base_cy | 2 | 0.011 / 0.5 | 0.02 / 1.0 |" in table
