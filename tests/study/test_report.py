"""study.report on a study folder made here (no Ray): tables, plots, importance, --final retraining."""

from __future__ import annotations

import json

import pytest
import yaml

from study import report
from study.files import atomic_write_csv

# (trial id, schedule, schedule.lr, seed, status, best val mAP, best rank-1, val mAP by epoch)
TRIALS = [
    ("ft0", "finetune", 0.01, 0, "finished", 0.30, 0.50, [0.10, 0.30]),
    ("ft1", "finetune", 0.01, 1, "finished", 0.20, 0.40, [0.15, 0.20]),
    ("ir0", "incremental_rollback", 0.02, 0, "finished", 0.40, 0.60, [0.20, 0.40]),
    ("ir1", "incremental_rollback", 0.02, 1, "stopped", 0.50, 0.70, [0.50]),
]


def write_study(folder, synthetic_dir, optuna_values=(0.25, 0.45)):
    """A two-schedule study folder as study.sweep leaves it."""
    saved = {
        "_name": "mini",
        "model": {"backbone": "mobilenet_v2", "weights": "packaged"},
        "data": {
            "root": "synthetic",
            "synthetic_dir": synthetic_dir,
            "synthetic": {"identities": 32, "cameras": 3, "seed": 0},
            "height": 64,
            "width": 32,
            "val_identities": 6,
        },
        "train": {"batch_size": 16, "eval_batch_size": 64},
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
            }
        )
        for epoch, value in enumerate(curve, start=1):
            epochs.append(
                {
                    "trial_id": trial_id,
                    "schedule": schedule,
                    "seed": seed,
                    "epoch": epoch,
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


def test_report_compares_schedules_over_seeds(tmp_path, synthetic_dir):
    write_study(tmp_path, synthetic_dir)
    report.main([str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    table = lines.index(
        "| schedule | best val mAP | best val rank-1 | seeds | epochs | configurations | trials | status |"
    )
    # Best first; mean ± population std over the seeds, in percent.
    assert (
        lines[table + 2]
        == "| incremental_rollback | 45.00 ± 5.00 | 65.00 ± 5.00 | 2 | 1.5 | 1 | 2 | 1 finished, 1 stopped |"
    )
    assert lines[table + 3] == "| finetune | 25.00 ± 5.00 | 45.00 ± 5.00 | 2 | 2 | 1 | 2 | 2 finished |"
    assert "**incremental_rollback**: best val_mAP 45.00 ± 5.00" in text
    assert "- `schedule.lr`: 0.02" in text and "Trials: ir0, ir1." in text
    for name in ("val_mAP.png", "loss.png", "grad_norm.png", "params.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
        assert f"(plots/{name})" in text


def test_importance_is_computed_from_the_optuna_study(tmp_path, synthetic_dir):
    write_study(tmp_path, synthetic_dir, optuna_values=(0.25, 0.45, 0.20, 0.50, 0.22))
    section = report.importance_section(report.load_study(tmp_path))
    assert section[0].startswith("PED-ANOVA over 5 completed configurations")
    names = {line.split("`")[1] for line in section if line.startswith("| `")}
    assert names == {"schedule.lr", "schedule.name"}


def test_importance_needs_two_completed_configurations(tmp_path, synthetic_dir):
    write_study(tmp_path, synthetic_dir, optuna_values=(0.25,))
    section = report.importance_section(report.load_study(tmp_path))
    assert section == [
        "Not computed: needs at least 2 completed configurations and 1 varying parameter (has 1 and 0)."
    ]


def test_folder_without_a_study_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path} holds no study (no study.yaml); run python -m study.sweep first\n"


def test_final_retrains_the_best_and_finetune_on_the_test_protocol(tmp_path, synthetic_dir):
    write_study(tmp_path, synthetic_dir)
    report.main([str(tmp_path), "--final"])
    best = json.loads((tmp_path / "final" / "best" / "summary.json").read_text())
    finetune = json.loads((tmp_path / "final" / "finetune" / "summary.json").read_text())
    assert best["schedule"] == "incremental_rollback" and best["epochs"] == 2
    assert best["config"]["data"]["evaluate_on"] == "test" and best["config"]["schedule"]["lr"] == 0.02
    assert finetune["schedule"] == "finetune" and finetune["config"]["schedule"]["epochs"] == 2
    text = (tmp_path / "report.md").read_text()
    assert "## Test set (retrained on every training identity)" in text
    assert f"| best | incremental_rollback | {best['final_test_mAP'] * 100:.2f} |" in text
    assert f"| finetune | finetune | {finetune['final_test_mAP'] * 100:.2f} |" in text
