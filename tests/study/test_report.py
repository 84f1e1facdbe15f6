"""study.report on a study folder made here (no Ray): tables, plots, importance, --final retraining."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from study.errors import UserError
from study.files import atomic_write_csv
from study.report import chance, cli, curves, final, loading, statistics, tables

# (trial id, schedule, schedule.lr, seed, status, best val mAP, best rank-1, val mAP by epoch)
TRIALS = [
    ("ft0", "finetune", 0.01, 0, "finished", 0.30, 0.50, [0.10, 0.30]),
    ("ft1", "finetune", 0.01, 1, "finished", 0.20, 0.40, [0.20, 0.15]),
    ("ir0", "incremental_rollback", 0.02, 0, "finished", 0.40, 0.60, [0.20, 0.40]),
    ("ir1", "incremental_rollback", 0.02, 1, "stopped", 0.50, 0.70, [0.50]),
]


def write_study(folder, tiny_base, optuna_values=(0.25, 0.45)):
    """A two-schedule study folder as study.sweep leaves it."""
    saved = {
        "_name": "mini",
        **tiny_base(),
        "schedule": {"name": "incremental_rollback", "periods": 2, "period_epochs": 1},
        "search": {
            "schedules": ["finetune", "incremental_rollback"],
            "seeds": [0, 1],
            "params": {"schedule.lr": {"loguniform": [0.005, 0.05]}},
            "when": {"finetune": {"schedule.epochs": 2}},
        },
        "tune": {"num_samples": 2},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(saved))
    results, epochs = [], []
    for trial_id, schedule, lr, seed, status, best, rank1, curve in TRIALS:
        results.append(
            {
                "trial_id": trial_id,
                "schedule": schedule,
                "schedule.lr": lr,
                "schedule.epochs": 2 if schedule == "finetune" else None,
                "seed": seed,
                "status": status,
                "epochs": len(curve),
                "best_val_mAP": best,
                "best_val_rank1": rank1,
                "final_val_mAP": curve[-1],
            }
        )
        for epoch, value in enumerate(curve, start=1):
            epochs.append(
                {
                    "trial_id": trial_id,
                    "schedule": schedule,
                    "seed": seed,
                    "epoch": epoch,
                    "period": 1 if schedule == "finetune" else epoch,  # rollback: 1-epoch periods
                    "validated": True,
                    "loss": 5.0 - epoch,
                    "val_mAP": value,
                    **{f"grad_norm_{g}": 1.0 + epoch for g in ("B1", "B2", "B3", "B4", "B5", "head")},
                    "diverged": False,
                }
            )
    atomic_write_csv(folder / "results.csv", results)
    atomic_write_csv(folder / "epochs.csv", epochs)
    write_optuna(folder, optuna_values)


def write_optuna(folder, values):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="mini", storage=f"sqlite:///{folder / 'optuna.db'}", direction="maximize"
    )
    schedules = optuna.distributions.CategoricalDistribution(["finetune", "incremental_rollback"])
    lr = optuna.distributions.FloatDistribution(0.005, 0.05, log=True)
    for i, value in enumerate(values):
        study.add_trial(
            optuna.trial.create_trial(
                params={
                    "schedule.name": ["finetune", "incremental_rollback"][i % 2],
                    "schedule.lr": 0.01 + i * 0.004,
                },
                distributions={"schedule.name": schedules, "schedule.lr": lr},
                value=value,
            )
        )


@pytest.mark.slow
def test_report_compares_schedules_over_seeds(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    cli.main([str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    table = lines.index(
        "| schedule | best val mAP | best val rank-1 | final val mAP "
        "| seeds | epochs | configurations | trials | status |"
    )
    # Best first; mean ± sample std over the seeds (two values a, b: |a - b| / sqrt 2), in percent.
    assert (
        lines[table + 2]
        == "| incremental_rollback | 45.00 ± 7.07 | 65.00 ± 7.07 | 45.00 ± 7.07 | 2 | 1.5 | 1 | 2 "
        "| 1 finished, 1 stopped |"
    )
    # ft1 ends below its best: final 0.30 and 0.15
    assert lines[table + 3] == (
        "| finetune | 25.00 ± 7.07 | 45.00 ± 7.07 | 22.50 ± 10.61 | 2 | 2 | 1 | 2 | 2 finished |"
    )
    assert "**incremental_rollback**: best val_mAP 45.00 ± 7.07" in text
    assert "- `schedule.lr`: 0.02" in text and "Trials: ir0, ir1." in text
    for name in ("val_mAP.png", "loss.png", "grad_norm.png", "params.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
        assert f"(plots/{name})" in text


def test_train_it_again_builds_the_trials_run_config_without_its_trials_folder(tmp_path, tiny_base):
    import dataclasses
    import shlex

    from study.config import load_config
    from study.search_space import load_search_space

    write_study(tmp_path, tiny_base)  # tables only, as a piece is committed: no trials/ folders
    study = loading.load_study(tmp_path)
    command = shlex.split(study.retrain_command("ft1"))
    assert command[:4] == ["python", "-m", "study.train", str(tmp_path / "study.yaml")]
    assert command[-2:] == ["--out", "DIR"]
    rebuilt = load_config(command[3], command[5:-2:2])
    sampled = {"schedule.name": "finetune", "schedule.lr": 0.01, "schedule.epochs": 2, "train.seed": 1}
    expected = load_search_space(tmp_path / "study.yaml").run_config(sampled)
    assert rebuilt.schedule == {"name": "finetune", "lr": 0.01, "epochs": 2}
    assert dataclasses.replace(rebuilt, train=dataclasses.replace(rebuilt.train, progress=False)) == expected
    # a trial whose folder is there is trained again from its own config
    (tmp_path / "trials" / "ir0").mkdir(parents=True)
    (tmp_path / "trials" / "ir0" / "config.yaml").write_text("{}")
    assert (
        study.retrain_command("ir0") == f"python -m study.train {tmp_path}/trials/ir0/config.yaml --out DIR"
    )


def test_importance_is_computed_from_the_optuna_study(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base, optuna_values=(0.25, 0.45, 0.20, 0.50, 0.22))
    section = tables.importance_section(loading.load_study(tmp_path))
    assert section[0].startswith("PED-ANOVA over 5 completed configurations")
    names = {line.split("`")[1] for line in section if line.startswith("| `")}
    assert names == {"schedule.lr", "schedule.name"}


def test_importance_needs_two_completed_configurations_per_varying_parameter(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base, optuna_values=(0.25, 0.45, 0.20))
    section = tables.importance_section(loading.load_study(tmp_path))
    assert section == [
        "Not computed: needs at least 2 completed configurations per varying parameter, plus one "
        "(has 3 for 2)."
    ]
    write_study(tmp_path / "four", tiny_base, optuna_values=(0.25, 0.45, 0.20, 0.50))
    section = tables.importance_section(loading.load_study(tmp_path / "four"))
    assert section[0].endswith("(has 4 for 2).")  # schedule and lr: 5 needed


def write_optuna_trials(folder, trials):
    """optuna.db of study "mini" holding completed trials (params, value)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (folder / "optuna.db").unlink(missing_ok=True)
    study = optuna.create_study(
        study_name="mini", storage=f"sqlite:///{folder / 'optuna.db'}", direction="maximize"
    )
    distributions = {
        "schedule.name": optuna.distributions.CategoricalDistribution(["finetune", "incremental_rollback"]),
        "schedule.lr": optuna.distributions.FloatDistribution(0.005, 0.05, log=True),
        "train.weight_decay": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
    }
    for params, value in trials:
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={k: distributions[k] for k in params}, value=value
            )
        )


def test_importance_leaves_out_parameters_every_trial_shares(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    # the paired demo's shape: three trials, one per schedule, all at one sampled lr
    names = ["finetune", "incremental_rollback", "finetune"]
    write_optuna_trials(
        tmp_path,
        [
            ({"schedule.name": name, "schedule.lr": 0.0107}, value)
            for name, value in zip(names, (0.1, 0.3, 0.2), strict=True)
        ],
    )
    assert tables.importance_section(loading.load_study(tmp_path)) == [
        "Not computed: 1 parameter(s) varied over the 3 completed configurations (`schedule.name`); "
        "`schedule.lr` took one value in every trial; importance shares the effect out among at least two "
        "parameters that vary."
    ]
    # with two that vary, the shared lr gets no row
    trials = [
        ({"schedule.name": name, "schedule.lr": 0.0107, "train.weight_decay": decay}, value)
        for name, decay, value in [
            ("finetune", 1e-4, 0.10),
            ("incremental_rollback", 1e-3, 0.30),
            ("finetune", 1e-3, 0.22),
            ("incremental_rollback", 1e-4, 0.25),
            ("finetune", 5e-4, 0.15),
            ("incremental_rollback", 5e-4, 0.28),
        ]
    ]
    write_optuna_trials(tmp_path, trials)
    section = tables.importance_section(loading.load_study(tmp_path))
    assert section[0].startswith("PED-ANOVA over 6 completed configurations")
    names = {line.split("`")[1] for line in section if line.startswith("| `")}
    assert names == {"schedule.name", "train.weight_decay"}


def test_importance_is_not_computed_when_a_parameter_is_confounded_with_the_schedule(tmp_path, tiny_base):
    # The demo's shape before search.paired: each schedule at one value of lr, here 5 configurations
    # with lr = 0.01 for finetune and 0.014 for incremental_rollback.
    write_study(tmp_path, tiny_base, optuna_values=(0.25, 0.45, 0.20, 0.50, 0.22))
    import optuna

    stored = optuna.load_study(study_name="mini", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = stored.get_trials()
    assert tables._confounded_with_schedule(trials, ["schedule.lr", "schedule.name"]) == []
    for trial in trials:  # the same lr whenever the schedule is the same
        trial.params["schedule.lr"] = 0.01 if trial.params["schedule.name"] == "finetune" else 0.014
    assert tables._confounded_with_schedule(trials, ["schedule.lr", "schedule.name"]) == ["schedule.lr"]


def test_folder_without_a_study_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path} holds no study (no study.yaml); run python -m study.sweep first\n"


def test_gradient_table_compares_each_block_with_finetune(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    lines = curves.gradient_table(loading.load_study(tmp_path))
    # Second half of each run: finetune's epoch 2 (norm 3.0); rollback's epoch 2 of ir0 (3.0) and
    # epoch 1 of ir1, which stopped after one epoch (2.0): 2.5, 0.83x finetune's.
    assert lines[2] == "| schedule | B1 | B2 | B3 | B4 | B5 | head |"
    assert lines[4] == "| incremental_rollback |" + " 2.5 (0.83×) |" * 6
    assert lines[5] == "| finetune |" + " 3 (1.00×) |" * 6


def test_evaluation_table_gives_the_curve_of_each_schedule_over_seeds(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    lines = curves.evaluation_table(loading.load_study(tmp_path))
    assert lines[2] == "| schedule | epoch 1 | epoch 2 |"
    # rollback: epoch 1 of both seeds (0.20, 0.50), epoch 2 of seed 0 only (ir1 stopped after one)
    assert lines[4] == "| incremental_rollback | 35.00 ± 21.21 | 40.00 |"  # one seed at epoch 2: no spread
    assert lines[5] == "| finetune | 15.00 ± 7.07 | 22.50 ± 10.61 |"


def test_against_finetune_compares_final_map_with_welchs_test(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    lines = tables.against_finetune(loading.load_study(tmp_path))
    # Final values: rollback 0.40, 0.50; finetune 0.30, 0.15. Welch: t = 2.496, df = 1.742, p = 0.148.
    assert lines[2] == "| schedule | final val mAP | Δ vs finetune | p | seeds better |"
    assert lines[4] == "| incremental_rollback | 45.00 ± 7.07 | +22.50 | 0.148 | 2/2 |"
    assert len(lines) == 5


def test_against_finetune_needs_finetune_trials(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    study.results = study.results[study.results["schedule"] != "finetune"]
    assert tables.against_finetune(study) == ["No comparison: the study has no `finetune` trials."]


def test_boundary_gradient_table_divides_a_period_start_by_the_previous_end(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    lines = curves.boundary_gradient_table(study)
    # ir0 crosses one boundary: epoch 2 (period 2, norm 3.0) over epoch 1 (period 1, norm 2.0);
    # ir1 stopped in period 1 and finetune has a single period.
    assert lines[2] == "| schedule | boundaries | B1 | B2 | B3 | B4 | B5 | head |"
    assert lines[4:] == ["| incremental_rollback | 1 |" + " 1.50× |" * 6]
    # Geometric mean over boundaries: ratios 1.5 and 6.0 give 3.0.
    extra = study.epochs[study.epochs["trial_id"] == "ir0"].assign(epoch=3, period=3)
    extra[[c for c in extra.columns if c.startswith("grad_norm_")]] = 18.0
    study.epochs = pd.concat([study.epochs, extra], ignore_index=True)
    assert curves.boundary_gradient_table(study)[4] == "| incremental_rollback | 2 |" + " 3.00× |" * 6
    # A block frozen in the period before (norm 0, as in fc_warmup's warm-up) has no ratio.
    study.epochs.loc[(study.epochs["trial_id"] == "ir0") & (study.epochs["epoch"] == 1), "grad_norm_B1"] = 0.0
    assert curves.boundary_gradient_table(study)[4] == "| incremental_rollback | 2 | 6.00× |" + " 3.00× |" * 5
    study.epochs = study.epochs[study.epochs["schedule"] == "finetune"]
    assert curves.boundary_gradient_table(study) == [
        "No schedule in this study has crossed a period boundary."
    ]


def test_several_studies_make_one_report_with_out(tmp_path, tiny_base, capsys):
    for name in ("first", "second"):
        write_study(tmp_path / name, tiny_base)
        saved = yaml.safe_load((tmp_path / name / "study.yaml").read_text())
        (tmp_path / name / "study.yaml").write_text(yaml.safe_dump(saved | {"_name": name}))
    out = tmp_path / "docs" / "results" / "both.md"
    cli.main([str(tmp_path / "first"), str(tmp_path / "second"), "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Studies first, second\n")
    assert "## Study first" in text and "## Study second" in text and "### Schedules" in text
    for name in ("first", "second"):
        assert f"(both/{name}/val_mAP.png)" in text
        assert (out.parent / "both" / name / "val_mAP.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "first" / "report.md").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path / "first"), str(tmp_path / "second")])
    assert exit_info.value.code == 2
    message = "error: several study folders make one report: name its file with --out FILE\n"
    assert capsys.readouterr().err == message


def split_into_pieces(whole, pieces):
    """Copy the study in ``whole`` into folders of its trials: {folder name: [(schedule, seed), ...]}."""
    import pandas as pd

    saved = yaml.safe_load((whole / "study.yaml").read_text())
    results, epochs = pd.read_csv(whole / "results.csv"), pd.read_csv(whole / "epochs.csv")
    for name, trials in pieces.items():
        folder = whole.parent / name
        folder.mkdir()
        keep = [(row.schedule, row.seed) in trials for row in results.itertuples()]
        ids = set(results[keep]["trial_id"])
        results[keep].to_csv(folder / "results.csv", index=False)
        epochs[epochs["trial_id"].isin(ids)].to_csv(folder / "epochs.csv", index=False)
        piece = yaml.safe_load(yaml.safe_dump(saved))
        piece["search"]["schedules"] = list(dict.fromkeys(schedule for schedule, _ in trials))
        piece["search"]["seeds"] = sorted({seed for _, seed in trials})
        piece["search"]["when"] = {
            k: v for k, v in saved["search"]["when"].items() if k in piece["search"]["schedules"]
        }
        piece["tune"]["num_samples"] = len(piece["search"]["schedules"])
        (folder / "study.yaml").write_text(yaml.safe_dump(piece))
    return [whole.parent / name for name in pieces]


def test_the_pieces_of_a_study_are_reported_as_the_whole_study(tmp_path, tiny_base, capsys):
    whole = tmp_path / "whole"
    write_study(whole, tiny_base)
    pieces = split_into_pieces(
        whole,
        {
            "seed0": [("finetune", 0), ("incremental_rollback", 0)],
            "seed1-ft": [("finetune", 1)],
            "seed1-ir": [("incremental_rollback", 1)],
        },
    )
    merged = loading.merge_pieces([loading.load_study(folder) for folder in pieces])
    assert len(merged) == 1 and merged[0].pieces == tuple(pieces) and len(merged[0].results) == 4
    assert merged[0].trial_folder("ir1") == pieces[2] / "trials" / "ir1"
    cli.main([str(folder) for folder in pieces] + ["--out", str(tmp_path / "pieces.md")])
    assert "3 folders reported as one, 4 trials in all" in capsys.readouterr().out
    cli.main([str(whole), "--out", str(tmp_path / "whole.md")])
    in_pieces, at_once = (tmp_path / "pieces.md").read_text(), (tmp_path / "whole.md").read_text()
    for section in ("### Schedules", "### Against fine-tuning", "### val_mAP at each evaluation"):
        assert section.replace("###", "##") in in_pieces
        assert _section(in_pieces, section[4:]) == _section(at_once, section[4:])
    assert "run in 3 pieces" in in_pieces and "Not computed: the study was run in pieces" in in_pieces


def _section(text, title):
    return text.split(f"## {title}\n")[1].split("\n## ")[0]


def test_pieces_may_differ_in_how_many_trials_ran_at_once(tmp_path, tiny_base):
    whole = tmp_path / "whole"
    write_study(whole, tiny_base)
    first, second = split_into_pieces(whole, {"a": [("finetune", 0)], "b": [("finetune", 1)]})
    saved = yaml.safe_load((second / "study.yaml").read_text())
    saved["tune"] |= {"max_concurrent": 1, "resources": {"cpu": 2, "gpu": 0}}
    (second / "study.yaml").write_text(yaml.safe_dump(saved))
    (merged,) = loading.merge_pieces([loading.load_study(first), loading.load_study(second)])
    assert sorted(merged.results["seed"]) == [0, 1]


def test_the_pieces_of_a_grid_study_merge_into_the_whole_grid(tmp_path, tiny_base):
    """Each piece runs the grid of its schedules (num_samples left out): the merged study is the
    grid of all of them, whatever the pieces' sizes add up to (pieces by seed repeat a grid)."""
    whole = tmp_path / "whole"
    write_study(whole, tiny_base)
    saved = yaml.safe_load((whole / "study.yaml").read_text())
    saved["search"]["params"]["schedule.lr"] = {"choice": [0.01, 0.02, 0.04]}
    saved["tune"] = {"sampler": "grid"}
    (whole / "study.yaml").write_text(yaml.safe_dump(saved))
    pieces = split_into_pieces(
        whole, {"seed0": [("finetune", 0), ("incremental_rollback", 0)], "seed1-ft": [("finetune", 1)]}
    )
    for piece in pieces:
        saved = yaml.safe_load((piece / "study.yaml").read_text())
        del saved["tune"]["num_samples"]
        (piece / "study.yaml").write_text(yaml.safe_dump(saved))
    (merged,) = loading.merge_pieces([loading.load_study(folder) for folder in pieces])
    assert "num_samples" not in merged.saved["tune"]
    configs = merged.trial_configs()  # the merged settings parse: a grid of 3 + 3 configurations
    assert {trial: c.schedule["lr"] for trial, c in configs.items()} == {
        "ft0": 0.01,
        "ir0": 0.02,
        "ft1": 0.01,
    }


def test_pieces_that_differ_or_overlap_are_one_line_errors(tmp_path, tiny_base, capsys):
    whole = tmp_path / "whole"
    write_study(whole, tiny_base)
    first, second = split_into_pieces(
        whole, {"a": [("finetune", 0), ("finetune", 1)], "b": [("finetune", 1)]}
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(first), str(second), "--out", str(tmp_path / "r.md")])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: finetune seed 1 was trained in {first} and {second}: keep one of them\n"
    )
    saved = yaml.safe_load((second / "study.yaml").read_text())
    saved["schedule"]["period_epochs"] = 3
    (second / "study.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match=r"are pieces of study 'mini' but differ in schedule.period_epochs"):
        loading.merge_pieces([loading.load_study(first), loading.load_study(second)])


@pytest.mark.slow
def test_final_retrains_the_best_and_finetune_once_per_seed_on_the_test_protocol(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    cli.main([str(tmp_path), "--final"])
    runs = {}
    for label in ("best", "finetune"):
        for seed in (0, 1):
            summary = tmp_path / "final" / label / f"seed-{seed}" / "summary.json"
            runs[label, seed] = json.loads(summary.read_text())
    best, finetune = runs["best", 1], runs["finetune", 0]
    assert best["schedule"] == "incremental_rollback" and best["epochs"] == 2
    assert best["config"]["data"]["evaluate_on"] == "test" and best["config"]["schedule"]["lr"] == 0.02
    assert best["config"]["train"]["seed"] == 1 and runs["best", 0]["config"]["train"]["seed"] == 0
    assert finetune["schedule"] == "finetune" and finetune["config"]["schedule"]["epochs"] == 2
    control = json.loads((tmp_path / "final" / "control" / "seed-0" / "summary.json").read_text())
    assert control["schedule"] == "base_cy" and control["config"]["schedule"]["lr"] == 0.02  # the rollback's
    assert (
        control["config"]["schedule"]["periods"] == 2 and control["config"]["data"]["evaluate_on"] == "test"
    )
    text = (tmp_path / "report.md").read_text()
    assert "## Test set (retrained on every training identity)" in text
    maps = [runs["best", seed]["final_test_mAP"] * 100 for seed in (0, 1)]
    mean, std = sum(maps) / 2, abs(maps[0] - maps[1]) / 2**0.5
    assert f"| best | incremental_rollback | {mean:.2f} ± {std:.2f} |" in text
    assert f"{maps[0]:.2f} (seed 0), {maps[1]:.2f} (seed 1)" in text
    assert "The best configuration minus fine-tuning: " in text and "Welch's t-test p = " in text
    controls = [
        json.loads((tmp_path / "final" / "control" / f"seed-{s}" / "summary.json").read_text())
        for s in (0, 1)
    ]
    differences = [maps[s] - controls[s]["final_test_mAP"] * 100 for s in (0, 1)]
    assert "The rollback minus its control (`base_cy` at the rollback's values, the same seed): " in text
    assert f"{differences[0]:+.2f} (seed 0), {differences[1]:+.2f} (seed 1)" in text


@pytest.mark.slow
def test_final_runs_that_diverge_are_shown_as_diverged_not_as_their_last_evaluation(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    results = tmp_path / "results.csv"
    results.write_text(results.read_text().replace(",0.02,", ",1000000.0,"))  # the best's schedule.lr
    cli.main([str(tmp_path), "--final"])
    summary = json.loads((tmp_path / "final" / "best" / "seed-0" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["config"]["schedule"]["lr"] == 1e6
    text = (tmp_path / "report.md").read_text()
    assert "| best | incremental_rollback | – | – | 2 | diverged (seed 0), diverged (seed 1) |" in text
    assert "4 run(s) diverged; means and tests are over the runs that did not." in text  # and the control
    assert "| control | base_cy | – | – | 2 | diverged (seed 0), diverged (seed 1) |" in text
    assert "The best configuration minus fine-tuning" not in text  # nothing to compare with


@pytest.mark.slow
def test_final_with_jobs_trains_in_other_processes_as_it_would_here(tmp_path, tiny_base, monkeypatch):
    write_study(tmp_path / "here", tiny_base)
    write_study(tmp_path / "processes", tiny_base)
    # A run's numbers depend on its torch threads: train here with those of each of 2 processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(final.threads_per_job(2))
    try:
        here = final.retrain_final(loading.load_study(tmp_path / "here"), seeds=[0])
    finally:
        torch.set_num_threads(threads)

    def in_this_process(*args, **kwargs):
        raise AssertionError("--jobs 2 trained a run in the report's own process")

    monkeypatch.setattr("study.trainer.train_run", in_this_process)  # a spawned process imports its own
    processes = final.retrain_final(loading.load_study(tmp_path / "processes"), seeds=[0], jobs=2)
    assert [(run["label"], run["seed"]) for run in processes] == [
        ("best", 0),
        ("finetune", 0),
        ("control", 0),
    ]
    for alone, shared in zip(here, processes, strict=True):
        assert shared["summary"]["status"] == "finished" and shared["summary"]["epochs"] == 2
        assert shared["summary"]["config"]["train"]["progress"] is False  # no interleaved bars
        assert shared["summary"]["final_loss"] == alone["summary"]["final_loss"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jobs", "2"], "--jobs is an option of the --final retraining; add --final"),
        (["--seeds", "0"], "--seeds is an option of the --final retraining; add --final"),
        (["--final", "--jobs", "0"], "--jobs must be at least 1, got 0"),
    ],
)
def test_bad_final_options_are_one_line_errors(tmp_path, tiny_base, capsys, args, message):
    write_study(tmp_path, tiny_base)
    with pytest.raises(SystemExit) as exit:
        cli.main([str(tmp_path), *args])
    assert exit.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "final").exists() and not (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_final_fine_tunes_for_the_best_budget_when_the_study_has_no_finetune(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    study.results = study.results[study.results["schedule"] != "finetune"]
    runs = final.retrain_final(study, seeds=[0])
    assert [(run["label"], run["seed"]) for run in runs] == [("best", 0), ("finetune", 0), ("control", 0)]
    baseline = runs[1]["summary"]["config"]["schedule"]
    # incremental_rollback's 2 periods x 1 epoch: 2 epochs, LR x0.1 half-way as in the paper's baseline
    assert baseline["name"] == "finetune" and baseline["epochs"] == 2 and baseline["decay_every"] == "half"
    assert runs[1]["summary"]["epochs"] == 2 and runs[1]["summary"]["config"]["data"]["evaluate_on"] == "test"


def test_final_retrains_nothing_in_a_study_already_on_the_test_protocol(tmp_path, tiny_base, capsys):
    write_study(tmp_path, tiny_base)
    saved = yaml.safe_load((tmp_path / "study.yaml").read_text())
    saved["data"]["evaluate_on"] = "test"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(saved))
    for name in ("results.csv", "epochs.csv"):
        (tmp_path / name).write_text((tmp_path / name).read_text().replace("val_", "test_"))
    cli.main([str(tmp_path), "--final"])
    assert "was evaluated on the test protocol already: --final retrains nothing" in capsys.readouterr().out
    assert not (tmp_path / "final").exists()
    text = (tmp_path / "report.md").read_text()
    assert "| incremental_rollback | 45.00 ± 7.07 |" in text and "--final" not in text


def test_period_table_reads_every_schedule_at_every_period_end_as_the_papers_table_2(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    epochs = study.epochs
    finetune = epochs["schedule"] == "finetune"
    epochs["periods_done"] = epochs["period"].where(~finetune, (epochs["epoch"] == 2).astype(int))
    epochs["val_rank1"] = epochs["val_mAP"] + 0.10
    epochs["accuracy"] = 0.5
    lines = curves.period_table(study)
    assert lines[2] == "| schedule | after epoch | n | val mAP | val rank-1 | training accuracy |"
    # The rollback's 1-epoch periods end at epochs 1 and 2 (ir1 stopped after 1), finetune's one
    # period at 2; finetune is read at epoch 1 too, the end of the rollback's first period.
    assert lines[4:] == [
        "| incremental_rollback | 1 (period 1) | 2 | 35.00 ± 21.21 | 45.00 ± 21.21 | 50.0 |",
        "| incremental_rollback | 2 (period 2) | 1 | 40.00 | 50.00 | 50.0 |",
        "| finetune | 1 | 2 | 15.00 ± 7.07 | 25.00 ± 7.07 | 50.0 |",
        "| finetune | 2 (period 1) | 2 | 22.50 ± 10.61 | 32.50 ± 10.61 | 50.0 |",
    ]
    study.epochs["val_mAP"] = float("nan")
    assert curves.period_table(study) == ["No evaluations reported yet."]


def test_drift_table_gives_each_blocks_distance_from_pretrained_at_every_period_end(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    assert curves.drift_table(study)[0].startswith("No distances from the pre-trained weights")
    drift = {"ft0": 0.02, "ft1": 0.04, "ir0": 0.10, "ir1": 0.30}  # by trial, times the epoch below
    for block in ("B1", "B2", "B3", "B4", "B5"):
        study.epochs[f"drift_{block}"] = study.epochs["trial_id"].map(drift) * study.epochs["epoch"]
    lines = curves.drift_table(study)
    assert lines[2] == "| schedule | epoch | n | B1 | B2 | B3 | B4 | B5 |"
    # finetune's one period ends at epoch 2 (4 % and 8 %); the rollback's 1-epoch periods at 1 and 2,
    # where ir1 (stopped after epoch 1) has no second period.
    assert lines[4:] == [
        "| incremental_rollback | 1 | 2 |" + " 20.00 ± 14.14 |" * 5,
        "| incremental_rollback | 2 | 1 |" + " 20.00 |" * 5,  # one seed: no spread to give
        "| finetune | 2 | 2 |" + " 6.00 ± 2.83 |" * 5,
    ]
    # With periods_done a period ends where the run completed it, as in Table 2: ft1 stopped
    # before the end of its one period, so only ft0's is left.
    ends_of_finetune = ((study.epochs["trial_id"] == "ft0") & (study.epochs["epoch"] == 2)).astype(int)
    finetune = study.epochs["schedule"] == "finetune"
    study.epochs["periods_done"] = study.epochs["period"].where(~finetune, ends_of_finetune)
    assert curves.drift_table(study)[-1] == "| finetune | 2 | 1 |" + " 4.00 |" * 5


# ----------------------------------------------------------------------------- verdict and caveats


def test_a_clearly_better_schedule_is_called_better_with_its_interval():
    baseline = pd.Series([0.20, 0.30, 0.25], index=[0, 1, 2])
    better = statistics.paired_comparison("x", baseline + pd.Series([0.10, 0.12, 0.11]), baseline)
    # differences 0.10, 0.12, 0.11: mean 0.11, sd 0.01, t(0.975, 2) = 4.303 -> 0.11 ± 0.02484
    assert better.call == "better" and better.seeds == 3
    assert (better.low, better.high) == (pytest.approx(0.08516, abs=1e-5), pytest.approx(0.13484, abs=1e-5))
    worse = statistics.paired_comparison("y", baseline - 0.05 + pd.Series([0.0, 0.01, -0.01]), baseline)
    assert worse.call == "worse"


def test_identical_schedules_show_no_detectable_difference_and_one_seed_allows_no_call():
    baseline = pd.Series([0.20, 0.30, 0.25], index=[0, 1, 2])
    same = statistics.paired_comparison("x", baseline.copy(), baseline)
    assert same.call == "no detectable difference" and (same.low, same.high) == (0.0, 0.0)
    noisy = statistics.paired_comparison("y", baseline + pd.Series([0.05, -0.04, 0.01]), baseline)
    assert noisy.call == "no detectable difference" and noisy.low < 0 < noisy.high
    one = statistics.paired_comparison("z", pd.Series([0.9], index=[0]), baseline)
    assert one.call == "no call can be made" and one.seeds == 1
    unpaired = statistics.paired_comparison("w", pd.Series([0.9], index=[7]), baseline)
    assert unpaired.seeds == 0  # seeds the baseline lacks are not compared


def test_the_verdict_comes_first_with_its_interval_and_the_caveats_say_what_was_found(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    cli.main([str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[:2] == ["## Verdict", "## Caveats"]
    # finals: rollback 0.40, 0.50 vs finetune 0.30, 0.15 -> differences 0.10, 0.35: mean 0.225,
    # sd 0.1768, t(0.975, 1) = 12.706 -> 22.50 ± 158.82 points
    assert (
        "- **incremental_rollback**: no detectable difference: +22.50 points (95 % CI -136.33 to +181.33; "
        "2 seeds, better on 2); pairing unverified: no environment recorded." in text
    )
    # the best configurations differ in lr (finetune 0.01, rollback 0.02): confounded with the schedule
    assert "- The schedules were compared at different hyperparameters: `schedule.lr` (" in text
    assert "incremental_rollback 0.02" in text and "finetune 0.01" in text
    # 32 synthetic identities, 6 held out for validation: a random ranking's expectations
    assert "- Chance level of this evaluation split (" in text


def test_a_grid_studys_caveat_on_differing_best_values_says_each_is_at_its_best(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    (tpe,) = statistics._confounded_hyperparameters(study)
    assert tpe.endswith("confounded; `search.paired: true` runs every schedule at the same sampled values.")
    study.saved["tune"] = {"sampler": "grid"}
    (grid,) = statistics._confounded_hyperparameters(study)
    assert grid.startswith("- The schedules were compared at different hyperparameters: `schedule.lr` (")
    assert grid.endswith(
        ". Each schedule ran every point of its grid: these are each one's best, not one shared setting."
    )


def test_runs_still_improving_at_their_last_evaluations_are_called_not_converged(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    assert statistics._not_converged(study) == []  # two evaluations each: too few to tell
    extra = study.epochs[study.epochs["schedule"] == "finetune"].copy()
    extra["epoch"] += 2
    extra["val_mAP"] += 0.10  # epochs 3 and 4 at +10 points
    study.epochs = pd.concat([study.epochs, extra], ignore_index=True)
    (line,) = statistics._not_converged(study)
    # finetune's mean curve: 15.0, 22.5, 25.0, 32.5 -> +10.00 from epoch 2 to epoch 4
    assert line.startswith(
        "- Not converged: val_mAP still rose over the last 2 evaluations of finetune +10.00"
    )


def test_a_random_rankings_expected_ap_matches_every_permutation():
    import itertools

    for n, m in [(1, 1), (4, 1), (5, 2), (6, 3), (6, 6)]:
        aps = []
        for order in itertools.permutations([1] * m + [0] * (n - m)):
            ranks = [i + 1 for i, hit in enumerate(order) if hit]
            aps.append(sum((j + 1) / r for j, r in enumerate(ranks)) / m)
        assert chance.random_ranking_ap(n, m) == pytest.approx(sum(aps) / len(aps))


# ----------------------------------------------------------------------------- at chance level


def scaled_to_chance(study, factor):
    """The study with every trial's best and final mAP scaled so that the best schedule's mean best
    mAP is ``factor`` × the chance level of its split."""
    level = chance.chance_level(study)[2]
    top = study.best_per_schedule().iloc[0]["mAP_mean"]
    for column in ("best_val_mAP", "final_val_mAP"):
        study.results[column] = study.results[column] * factor * level / top
    return study


def test_results_under_near_chance_times_the_chance_level_are_called_at_chance(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    assert chance.near_chance(study) is None  # rollback's 45 % is 2.6 x the split's 17.17 %
    assert tables.best_configuration(study)[0].startswith("**incremental_rollback**: best val_mAP 45.00")
    just_above = scaled_to_chance(loading.load_study(tmp_path), chance.NEAR_CHANCE * 1.01)
    assert chance.near_chance(just_above) is None
    below = scaled_to_chance(loading.load_study(tmp_path), chance.NEAR_CHANCE * 0.99)
    warning = chance.near_chance(below)
    assert warning.startswith("**Results at chance level: no schedule learned enough to compare.** ")
    # 1.485 x 17.17 %: 25.50 %
    assert (
        "The best, `incremental_rollback`, reaches 25.50 % best val_mAP (mean over seeds), under 1.5 × "
        in (warning)
    )
    assert "the 17.17 % a random ranking of this split scores" in warning
    assert tables.best_configuration(below)[0].startswith(
        "None: every configuration is at chance level (under 1.5 × a random ranking's val_mAP). "
        "The highest, for the record, `incremental_rollback`: best val_mAP 25.50"
    )


def test_a_report_at_chance_says_so_before_the_verdict(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = scaled_to_chance(loading.load_study(tmp_path), 1.0)
    atomic_write_csv(tmp_path / "results.csv", study.results.to_dict("records"))
    cli.main([str(tmp_path)])
    lines = (tmp_path / "report.md").read_text().splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("**Results at chance level"))
    assert warning < lines.index("## Verdict")
    best = lines.index("## Best configuration")
    assert lines[best + 2].startswith("None: every configuration is at chance level")


def test_the_map_plot_draws_the_chance_level_as_a_dashed_line(tmp_path, tiny_base, monkeypatch):
    from study.report import plots

    saved = {}

    def keep(fig, path, rect=(0, 0, 1, 1)):
        saved[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    plots.write_plots(study, tmp_path / "plots")
    (ax,) = saved["val_mAP.png"].axes
    (line,) = [line for line in ax.get_lines() if line.get_label() == "chance"]
    assert line.get_linestyle() == "--"
    assert list(line.get_ydata()) == [pytest.approx(chance.chance_level(study)[2] * 100)] * 2
    assert "chance" in [text.get_text() for text in ax.get_legend().get_texts()]
    (loss,) = saved["loss.png"].axes
    assert "chance" not in [line.get_label() for line in loss.get_lines()]


# ----------------------------------------------------------------------------- a study still running


def test_unfinished_runs_are_compared_at_the_latest_epoch_all_reached_and_named_first(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    assert statistics.unfinished_note(study) is None
    (finished,) = statistics.comparisons(study)[1]
    assert finished.epoch is None  # all ended: final against final, 0.40 - 0.30 and 0.50 - 0.15
    assert list(finished.differences) == [pytest.approx(0.10), pytest.approx(0.35)]

    results = pd.read_csv(tmp_path / "results.csv")
    results.loc[results["trial_id"] == "ir1", "status"] = "running"  # 1 epoch of 2 done
    atomic_write_csv(tmp_path / "results.csv", results.to_dict("records"))
    study = loading.load_study(tmp_path)
    (interim,) = statistics.comparisons(study)[1]
    # every run has epoch 1: rollback 0.20, 0.50 against finetune 0.10, 0.20 (not finetune's final 0.15)
    assert interim.epoch == 1
    assert list(interim.differences) == [pytest.approx(0.10), pytest.approx(0.30)]
    cli.main([str(tmp_path)])
    lines = (tmp_path / "report.md").read_text().splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("**Study still running"))
    assert note < lines.index("## Verdict")
    assert lines[note].startswith(
        "**Study still running: 1 of 4 trials unfinished**: ir1 (incremental_rollback, seed 1, running, "
        "1 epochs done). A comparison that involves them reads every seed of both schedules at one epoch"
    )
    # differences 0.10, 0.30: mean 0.20, sd 0.1414, t(0.975, 1) = 12.706 -> 20.00 ± 127.06 points
    assert (
        "- **incremental_rollback** (*interim, at epoch 1*): no detectable difference: +20.00 points "
        "(95 % CI -107.06 to +147.06; 2 seeds, better on 2)" in lines[lines.index("## Verdict") + 4]
    )
    against = tables.against_finetune(study)
    assert against[0].endswith(
        " *Interim, at epoch N*: runs unfinished; both schedules' runs read at that epoch."
    )
    assert against[4].startswith("| incremental_rollback (*interim, at epoch 1*) | 35.00 ± 21.21 | +20.00 |")


def test_a_seed_whose_unfinished_run_has_no_evaluation_yet_is_left_out(tmp_path, tiny_base):
    write_study(tmp_path, tiny_base)
    study = loading.load_study(tmp_path)
    study.results.loc[study.results["trial_id"] == "ir1", "status"] = "pending"
    study.epochs = study.epochs[study.epochs["trial_id"] != "ir1"]
    best = study.best_per_schedule()
    rollback, finetune = (best[best["schedule"] == s].iloc[0] for s in ("incremental_rollback", "finetune"))
    values, reference, epoch = statistics.compared_values(study, rollback, finetune)
    # seed 0 alone, at epoch 2, the latest ir0 and ft0 both evaluated
    assert epoch == 2 and values.to_dict() == {0: 0.40} and reference.to_dict() == {0: 0.30}
    study.results.loc[study.results["trial_id"] == "ir0", "status"] = "pending"
    study.epochs = study.epochs[study.epochs["trial_id"] != "ir0"]
    assert tables.verdict(study) == [
        "No verdict yet: no schedule's runs and the baseline's have evaluated a common epoch yet."
    ]
