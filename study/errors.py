"""User-facing errors: one line, exit status 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from schedules.core import ScheduleError, closest

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input the user can fix; the CLI prints it on one line and exits with status 2."""


# What a command answers with one line and exit status 2: the study's errors and the schedules'.
USER_ERRORS = (UserError, ScheduleError)


def unknown(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Build the standard 'unknown X' error naming the valid choices."""
    valid = sorted(valid)
    return UserError(f"unknown {kind} {name!r}{closest(name, valid)}; valid: {', '.join(valid)}")


def description(doc: str | None) -> str:
    r"""A module docstring's first paragraph as ``--help`` text: on one line, without reST ``code`` marks.

    >>> description("``python -m x``: does y.\n\nMore.")
    'python -m x: does y.'
    """
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.replace("``", "").split())


def cli(main: F) -> F:
    """Wrap a CLI entry point: a UserError or ScheduleError becomes 'error: ...' on stderr, exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
