"""User-facing errors: one line, exit status 2, no traceback."""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input the user can fix; the CLI prints it on one line and exits with status 2."""


def closest(name: str, valid: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest valid name, or '' when nothing is close.

    >>> closest("perod_epochs", ["period_epochs", "lr"])
    " (did you mean 'period_epochs'?)"
    """
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


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
    """Wrap a CLI entry point so that a UserError becomes 'error: ...' on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
