"""The registry, plug-in schedules, and properties every registered schedule must have."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from schedules import (
    GROUPS,
    Period,
    Schedule,
    ScheduleError,
    build_schedule,
    register,
    registered,
    registry,
    uniform_lr,
)


@pytest.mark.parametrize("name", sorted(registered()))
def test_every_registered_schedule_builds_a_sane_plan(name):
    schedule = build_schedule({"name": name})
    plan = schedule.plan()
    assert plan and [s.epoch for s in plan] == list(range(1, len(plan) + 1))
    assert schedule.total_epochs == len(plan)
    assert plan[0].reset_optimizer
    for step in plan:
        assert set(step.lr) == set(GROUPS)
        for group, lr in step.lr.items():
            assert (lr == 0.0) if group in step.frozen else (lr > 0)
        assert not step.resets or step.first_in_period
    # parameters round-trip through the config form
    again = build_schedule({"name": name, **schedule.params()})
    assert again == schedule and again.plan() == plan


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):

        @register("incremental_rollback")
        @dataclasses.dataclass(frozen=True)
        class Impostor(Schedule):
            def build(self):
                return []


def test_unknown_schedule_lists_valid_names_and_suggests():
    with pytest.raises(
        ScheduleError,
        match=r"unknown schedule 'incremental_rolback' \(did you mean 'incremental_rollback'\?\); valid: ",
    ):
        build_schedule({"name": "incremental_rolback"})


def test_unknown_parameter_suggests_the_closest():
    with pytest.raises(ScheduleError, match="did you mean 'retained_lr'"):
        build_schedule({"name": "incremental_rollback", "retaned_lr": 0.1})


def test_plug_in_schedule_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_schedules.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from schedules import PRETRAINED, Period, Schedule, uniform_lr

            @dataclass(frozen=True)
            class RollbackTopOnce(Schedule):
                epochs: int = 2

                def build(self):
                    lr = uniform_lr(0.01, head=0.1)
                    return [Period(self.epochs, lr), Period(self.epochs, lr, resets={"B5": PRETRAINED})]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    schedule = build_schedule({"name": "my_schedules:RollbackTopOnce", "epochs": 3})
    plan = schedule.plan()
    assert len(plan) == 6 and set(plan[3].resets) == {"B5"}
    sys.modules.pop("my_schedules", None)


def test_a_name_a_users_module_registers_is_found_as_module_colon_name(tmp_path, monkeypatch):
    (tmp_path / "my_registered.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from schedules import Period, Schedule, register, uniform_lr

            @register("three_flat")
            @dataclass(frozen=True)
            class ThreeFlat(Schedule):
                def build(self):
                    return [Period(3, uniform_lr(0.01, head=0.1))]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_SCHEDULES", dict(registry._SCHEDULES))  # leave no user name behind
    monkeypatch.delitem(sys.modules, "my_registered", raising=False)
    with pytest.raises(ScheduleError, match=r"\(a schedule of your own module: module:Class, or module:name"):
        build_schedule({"name": "three_flat"})  # its module is not imported: the name is unknown
    assert build_schedule({"name": "my_registered:three_flat"}).total_epochs == 3
    assert build_schedule({"name": "three_flat"}).total_epochs == 3  # now imported, the name alone works
    with pytest.raises(ScheduleError, match="has no class or registered schedule 'incremental_rollback'"):
        build_schedule({"name": "my_registered:incremental_rollback"})  # registered, but not by that module
    sys.modules.pop("my_registered", None)


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_such_module_xyz:Thing", "cannot import schedule module 'no_such_module_xyz'"),
        ("schedules.paper:Nothing", "has no class or registered schedule 'Nothing'"),
        ("schedules.core:Period", "must be a dataclass subclass of schedules.Schedule"),
    ],
)
def test_plug_in_errors_are_user_errors(name, message):
    with pytest.raises(ScheduleError, match=message):
        build_schedule({"name": name})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "positive whole number of epochs"),
        ({"lr": {g: 0.1 for g in GROUPS if g != "head"}}, "missing groups"),
        ({"lr": {**uniform_lr(0.1, 0.1), "B1": 0.0}}, "learning rate of B1 must be positive"),
        ({"frozen": {"B6"}}, "unknown block 'B6'"),
    ],
)
def test_period_validation(kwargs, message):
    args = {"epochs": 1, "lr": uniform_lr(0.1, 0.1), **kwargs}
    with pytest.raises(ScheduleError, match=message):
        Period(**args)


def test_schedules_stand_alone_without_the_study_package():
    code = (
        "import sys, schedules; "
        "schedules.build_schedule({'name': 'incremental_rollback'}).plan(); "
        "print(sorted(m for m in sys.modules if m == 'study' or m.startswith('study.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
