"""Every use of Ray's private API in this project, in one place.

Written against Ray 2.60.0 (pinned in constraints.txt). Each use degrades gracefully when Ray moves
it: a logger name that no longer exists silences nothing, and a lookup that is gone is skipped
(``ray.init`` still reports its own errors).
"""

from __future__ import annotations

import logging

# Logs a line per checkpoint a trial reports; with one every period it drowns the progress table.
CHECKPOINT_LOGGER = "ray.train._internal.storage"
# Logs a notice on every local start about token authentication, which stays on.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
# Logs "Resume experiment with: Tuner.restore(...)" on Ctrl-C; the sweep prints its own command instead.
TUNE_LOGGER = "ray.tune.tune"


def quiet_checkpoint_lines() -> None:
    logging.getLogger(CHECKPOINT_LOGGER).setLevel(logging.WARNING)


def quiet_token_notice() -> None:
    logging.getLogger(TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)


def _not_a_restore_hint(record: logging.LogRecord) -> bool:
    return "Resume experiment with: Tuner.restore(" not in record.getMessage()


def quiet_restore_hint() -> None:
    logging.getLogger(TUNE_LOGGER).addFilter(_not_a_restore_hint)


def local_cluster_address() -> str | None:
    """The address ``--address auto`` means, as Ray looks it up; None when Ray's lookup moved.

    Raises ConnectionError when no Ray cluster runs on this machine.
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address("auto")
    except AttributeError:
        return None
