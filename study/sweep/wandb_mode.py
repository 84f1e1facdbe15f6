"""Which W&B mode a study runs in, and what the console says about it (needs neither Ray nor W&B)."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit


def wandb_mode(configured: str) -> str:
    """online, offline or disabled: ``auto`` is online when an API key is configured, else offline."""
    if configured != "auto":
        return configured
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if wandb_key_configured() else "offline"


def wandb_notice(configured: str, mode: str, out: Path) -> str | None:
    """What the console says when ``wandb.mode: auto`` chose offline, and why; None otherwise."""
    if configured != "auto" or mode != "offline":
        return None
    why = "WANDB_MODE=offline" if os.environ.get("WANDB_MODE") else "no API key configured"
    return f"W&B: {why}; logging offline to {out}/wandb (upload later with `wandb sync`)"


REACH_TIMEOUT_S = 5.0  # how long the W&B server may take to accept a connection


def online_or_offline(mode: str, out: Path) -> tuple[str, str | None]:
    """Online only where the W&B server answers; else offline (the runs can be synced later), with
    the notice that says so. Without this, every trial's ``wandb.init`` would fail after its own
    timeout and log nothing."""
    if mode != "online":
        return mode, None
    url = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S):
            return mode, None
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else error.strerror or type(error).__name__
        notice = (
            f"W&B: the server {host}:{port} is unreachable ({reason}); logging offline to {out}/wandb "
            "(upload later with `wandb sync`)"
        )
        return "offline", notice


def wandb_key_configured() -> bool:
    """Whether WANDB_API_KEY is set or ``wandb login`` stored a key in the netrc file (never read out)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
