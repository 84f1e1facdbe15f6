"""Schedules by name: built-ins register where they are defined; users name ``my_pkg.my_module:MyClass``
(or ``my_pkg.my_module:my_name`` for a name that module registers)."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from schedules.core import Schedule, ScheduleError, closest
from schedules.values import convert_value

S = TypeVar("S", bound=type[Schedule])

_SCHEDULES: dict[str, type[Schedule]] = {}


def register(name: str) -> Callable[[S], S]:
    """Class decorator: make a Schedule subclass available by ``name`` in configs.

    For example, ``@register("my_schedule")`` above ``@dataclass(frozen=True) class MySchedule(Schedule)``.
    """

    def decorate(cls: S) -> S:
        if name in _SCHEDULES and _SCHEDULES[name] is not cls:
            raise ValueError(
                f"schedule name {name!r} is already registered by {_SCHEDULES[name].__qualname__}"
            )
        if not (isinstance(cls, type) and issubclass(cls, Schedule) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{cls!r} must be a dataclass subclass of schedules.Schedule")
        cls.name = name
        _SCHEDULES[name] = cls
        return cls

    return decorate


def registered() -> dict[str, type[Schedule]]:
    """All registered schedules, by name."""
    return dict(_SCHEDULES)


def schedule_class(name: str) -> type[Schedule]:
    """The class for a registered name, a ``module.path:ClassName`` reference, or ``module.path:name``
    for a name that module registers (importing it is what registers the name)."""
    if ":" in name:
        return _import_class(name)
    if name not in _SCHEDULES:
        valid = sorted(_SCHEDULES)
        raise ScheduleError(
            f"unknown schedule {name!r}{closest(name, valid)}; valid: {', '.join(valid)}"
            " (a schedule of your own module: module:Class, or module:name for the name it registers)"
        )
    return _SCHEDULES[name]


def build_schedule(spec: Mapping[str, Any]) -> Schedule:
    """Build a schedule from a config section ``{name: ..., param: value, ...}``.

    >>> from schedules import build_schedule  # the package: it registers the built-in schedules
    >>> build_schedule({"name": "incremental_rollback", "period_epochs": 2}).total_epochs
    8
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise ScheduleError(f"schedule needs a name, got {name!r}; valid: {', '.join(sorted(_SCHEDULES))}")
    cls = schedule_class(name)
    fields = cls.parameter_names()
    hints = typing.get_type_hints(cls)
    params = {}
    for key, value in spec.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise ScheduleError(
                f"schedule {name!r} has no parameter {key!r}{closest(key, fields)}; valid: {valid}"
            )
        params[key] = convert_value(hints[key], value, f"schedule.{key}", error=ScheduleError)
    return cls(**params)


def _import_class(reference: str) -> type[Schedule]:
    module_name, _, class_name = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure of a user's module is their input to fix
        raise ScheduleError(
            f"cannot import schedule module {module_name!r} ({type(error).__name__}: {error}); "
            "is it on PYTHONPATH?"
        ) from None
    cls = getattr(module, class_name, None)
    registered_here = _SCHEDULES.get(class_name)
    if cls is None and registered_here is not None and registered_here.__module__ == module.__name__:
        cls = registered_here  # module:name, a name the module's @register gave
    if cls is None:
        raise ScheduleError(f"module {module_name!r} has no class or registered schedule {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Schedule) and dataclasses.is_dataclass(cls)):
        raise ScheduleError(f"{reference} must be a dataclass subclass of schedules.Schedule")
    return cls
