"""tune.sampler: grid: parsing and refusals, the grid across schedules, the searcher running it (no Ray)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import optuna
import pytest
import yaml

import study.search_space as search_space
import study.sweep.cli as sweep_cli
import study.sweep.searcher as sweep_searcher
from study.errors import UserError

# The study in small: the rollback over period length x retained LR, fine-tuning over its LR,
# base_cy over period length; one budget of 4 epochs.
GRID = {
    "schedule": {"name": "incremental_rollback", "budget_epochs": 4, "period_epochs": 2},
    "search": {
        "schedules": ["incremental_rollback", "finetune", "base_cy"],
        "seeds": [0, 1],
        "params": {
            "schedule.period_epochs": {"choice": [1, 2]},  # finetune has no period_epochs: not its
            "schedule.head_lr": 0.1,
        },
        "when": {
            "incremental_rollback": {"schedule.retained_lr": {"choice": [1.0e-4, 1.0e-3, 1.0e-2]}},
            "finetune": {"schedule.lr": {"choice": [0.005, 0.01]}, "schedule.epochs": 4},
        },
    },
    "tune": {"sampler": "grid"},
}

ROLLBACK, FINETUNE, BASE_CY = ({"schedule.name": name} for name in GRID["search"]["schedules"])
EXPECTED_GRID = [
    {**ROLLBACK, "schedule.period_epochs": 1, "schedule.retained_lr": 1.0e-4},
    {**ROLLBACK, "schedule.period_epochs": 1, "schedule.retained_lr": 1.0e-3},
    {**ROLLBACK, "schedule.period_epochs": 1, "schedule.retained_lr": 1.0e-2},
    {**ROLLBACK, "schedule.period_epochs": 2, "schedule.retained_lr": 1.0e-4},
    {**ROLLBACK, "schedule.period_epochs": 2, "schedule.retained_lr": 1.0e-3},
    {**ROLLBACK, "schedule.period_epochs": 2, "schedule.retained_lr": 1.0e-2},
    {**FINETUNE, "schedule.lr": 0.005},
    {**FINETUNE, "schedule.lr": 0.01},
    {**BASE_CY, "schedule.period_epochs": 1},
    {**BASE_CY, "schedule.period_epochs": 2},
]


def grid(**changes) -> dict:
    """GRID with ``section__key`` paths set (None deletes): not dots, which run-config keys hold."""
    data = copy.deepcopy(GRID)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return data


def parse(data: dict) -> search_space.SearchSpace:
    return search_space.parse_search_space(data, "grid")


def test_a_grid_runs_every_combination_of_each_schedules_choices_schedule_by_schedule():
    space = parse(grid())
    assert space.tune.sampler == "grid"
    assert space.grid() == EXPECTED_GRID
    assert space.tune.num_samples == 10 and space.num_trials == 20  # its size, unless given
    assert parse(grid(tune__num_samples=10)).grid() == EXPECTED_GRID  # the size itself is accepted
    tpe = parse(grid(tune={}, search__when__finetune={"schedule.epochs": 4}))
    assert tpe.tune.sampler == "tpe" and tpe.tune.num_samples == 3  # the default: TPE, one per schedule


def test_a_schedule_without_a_tuned_value_is_one_configuration_of_the_grid():
    space = parse(grid(search__params={"schedule.period_epochs": 2}))
    assert space.grid() == [
        {**ROLLBACK, "schedule.retained_lr": 1.0e-4},
        {**ROLLBACK, "schedule.retained_lr": 1.0e-3},
        {**ROLLBACK, "schedule.retained_lr": 1.0e-2},
        {**FINETUNE, "schedule.lr": 0.005},
        {**FINETUNE, "schedule.lr": 0.01},
        BASE_CY,
    ]
    assert space.tune.num_samples == 6


def test_search_paired_adds_nothing_to_a_grid():
    """Every schedule already runs at each value it shares (period_epochs: the rollback and base_cy);
    10 configurations are no multiple of the 3 schedules, which a paired TPE study would refuse."""
    space = parse(grid(search__paired=True))
    assert space.paired and space.grid() == EXPECTED_GRID


BAD = [
    (
        grid(search__params={"schedule.period_epochs": {"int": [1, 2]}}),
        "search.params.schedule.period_epochs is int, but tune.sampler: grid needs a choice: "
        "list its values as {choice: [...]}, or use tune.sampler: tpe",
    ),
    (
        grid(search__when__finetune={"schedule.lr": {"loguniform": [0.005, 0.01]}}),
        "search.when.finetune.schedule.lr is loguniform, but tune.sampler: grid needs a choice",
    ),
    (
        grid(tune__num_samples=4),
        "tune.num_samples=4, but the grid has 10 configurations; leave tune.num_samples out",
    ),
    (
        grid(tune__sampler="grdi"),
        "tune.sampler: unknown sampler 'grdi' (did you mean 'grid'?); valid: grid, tpe",
    ),
    (grid(tune__num_samples=0), "tune.num_samples must be a positive integer, got 0"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_a_grid_of_anything_but_choices_or_of_another_size_is_refused_in_one_line(data, message):
    with pytest.raises(UserError) as error:
        parse(data)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_sweep_refuses_a_grid_over_a_range_with_exit_status_2(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(BAD[0][0]))
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {BAD[0][1]}\n"
    assert not (tmp_path / "out").exists()


def test_the_opening_line_says_it_is_a_grid():
    line = sweep_cli.describe(parse(grid()))
    assert line == (
        "study grid: a grid of 10 configurations (incremental_rollback 6, finetune 2, base_cy 2) "
        "x 2 seeds = 20 trials; epochs per trial: incremental_rollback 4 at the base values, "
        "finetune 4 at the base values, base_cy 4 at the base values"
    )


def stored_trials(tmp_path) -> list:
    return optuna.load_study(study_name="grid", storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()


def without_seed(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("train.seed", sweep_searcher.CONFIGURATION_KEY)}


FIXED = {"schedule.head_lr": 0.1}  # and finetune's schedule.epochs: given to the trials, no Optuna parameter


def fixed_of(point: dict) -> dict:
    return FIXED | ({"schedule.epochs": 4} if point["schedule.name"] == "finetune" else {})


def test_the_searcher_gives_the_grid_in_order_each_point_once_per_seed(tmp_path):
    space = parse(grid())
    searcher = sweep_searcher.make_searcher(space, tmp_path)
    configs = [searcher.suggest(f"t{i}") for i in range(20)]
    assert searcher.suggest("one-too-many") == sweep_searcher.Searcher.FINISHED
    assert [c["train.seed"] for c in configs] == [0, 1] * 10
    assert [c[sweep_searcher.CONFIGURATION_KEY] for c in configs] == [i // 2 for i in range(20)]
    assert [without_seed(c) for c in configs] == [p | fixed_of(p) for p in EXPECTED_GRID for _ in range(2)]
    trials = stored_trials(tmp_path)  # one Optuna trial per point, holding its values and their choices
    assert [t.params for t in trials] == EXPECTED_GRID
    assert [t.user_attrs["configuration"] for t in trials] == list(range(10))
    assert trials[0].distributions["schedule.retained_lr"].choices == (1.0e-4, 1.0e-3, 1.0e-2)


def test_a_grid_of_one_schedule_keeps_the_schedule_out_of_optunas_parameters(tmp_path):
    data = grid(search__schedules=["finetune"], search__params=None, search__when__incremental_rollback=None)
    data["schedule"] = {"name": "finetune"}
    space = parse(data)
    searcher = sweep_searcher.make_searcher(space, tmp_path)
    configs = [without_seed(searcher.suggest(f"t{i}")) for i in range(4)]
    assert configs == [
        {**FINETUNE, "schedule.lr": lr, "schedule.epochs": 4} for lr in (0.005, 0.005, 0.01, 0.01)
    ]
    assert [t.params for t in stored_trials(tmp_path)] == [{"schedule.lr": 0.005}, {"schedule.lr": 0.01}]


def test_a_resumed_grid_searcher_runs_the_rest_of_the_grid_and_adopts_what_a_kill_left(tmp_path):
    """Restored from Tune's snapshot after a kill that came after Optuna stored configuration 3:
    the resumed searcher gives configuration 3 (the same Optuna trial) and then the rest, in order."""
    space = parse(grid())
    searcher = sweep_searcher.make_searcher(space, tmp_path)
    before = [searcher.suggest(f"a{i}") for i in range(6)]  # configurations 0, 1, 2
    for i in range(6):
        searcher.on_trial_complete(f"a{i}", {"val_mAP": 0.1 * i, "epoch": 4, "epochs_planned": 4})
    snapshot = tmp_path / "searcher.pkl"
    searcher.save(str(snapshot))
    searcher.suggest("lost")  # configuration 3 asked of Optuna, then the kill

    resumed = pickle.loads(pickle.dumps(sweep_searcher.make_searcher(space, tmp_path)))  # as in tuner.pkl
    resumed.restore(str(snapshot))
    after = [resumed.suggest(f"b{i}") for i in range(14)]
    assert resumed.suggest("one-too-many") == sweep_searcher.Searcher.FINISHED
    configs = before + after
    assert [c[sweep_searcher.CONFIGURATION_KEY] for c in configs] == [i // 2 for i in range(20)]
    assert [c["train.seed"] for c in configs] == [0, 1] * 10
    assert [without_seed(c) for c in configs] == [p | fixed_of(p) for p in EXPECTED_GRID for _ in range(2)]
    trials = stored_trials(tmp_path)
    assert [t.params for t in trials] == EXPECTED_GRID  # no configuration asked twice
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["RUNNING"] * 7
    assert [t.value for t in trials[:3]] == pytest.approx([0.05, 0.25, 0.45])


def test_the_readmes_grid_example_is_the_grid_its_opening_line_states():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    paragraph = readme.split("**A grid.**")[1]
    example = yaml.safe_load(paragraph.split("```yaml\n")[1].split("```")[0])
    space = search_space.parse_search_space(example, "readme")
    stated = paragraph.split("first line says `")[1].split("`")[0].replace("\n", " ")
    assert sweep_cli.describe(space).startswith(f"study readme: {stated};")
    schedules = [p["schedule.name"] for p in space.grid()]
    assert schedules == ["incremental_rollback"] * 9 + ["finetune"] * 3 + ["base_cy"] * 3
