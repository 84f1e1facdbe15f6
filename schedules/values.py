"""A value read from YAML, checked against its type hint: schedule parameters here, the run config in study.

One owner for the rules (numbers are finite, integers fit int64, a string is not a list, ...) and for
their one-line messages; ``study.config`` adds its own hints (config sections, seeds) through ``nested``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

# Integers fit int64: they end up in tensors and in torch's arguments.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def convert_value(
    hint: Any,
    value: Any,
    where: str,
    *,
    error: type[Exception] = ValueError,
    nested: Callable[[Any, Any, str], Any] | None = None,
) -> Any:
    """Check ``value`` against ``hint`` (int, float, bool, str, list, dict, Literal, a union, Optional).

    Returns the value (an int given for a float becomes a float) or raises ``error`` naming ``where``.
    ``nested`` converts each alternative of a union (default: this function with the same ``error``).

    >>> convert_value(int | Literal["half"], "half", "schedule.decay_every")
    'half'
    >>> convert_value(float, 1, "schedule.lr")
    1.0
    >>> convert_value(int, 2.5, "schedule.epochs")
    Traceback (most recent call last):
    ValueError: schedule.epochs must be an integer, got 2.5
    """
    if nested is None:

        def nested(inner: Any, item: Any, at: str) -> Any:
            return convert_value(inner, item, at, error=error)

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise error(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:
            return nested(alternatives[0], value, where)
        for inner in alternatives:
            with contextlib.suppress(error):
                return nested(inner, value, where)
        raise error(f"{where} must be {' or '.join(map(_describe, alternatives))}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{where} must be a mapping, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise error(f"{where} must be a list, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise error(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where} must be an integer, got {value!r}")
        if not INT_MIN <= value <= INT_MAX:
            raise error(f"{where} must be an integer between {INT_MIN} and {INT_MAX}, got {value}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error(f"{where} must be a number, got {value!r}")
        if abs(value) > sys.float_info.max or not math.isfinite(value):  # nan, inf, or an int too large
            raise error(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise error(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(str, typing.get_args(hint)))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
