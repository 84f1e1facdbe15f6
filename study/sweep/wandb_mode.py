"""Which W&B mode a study runs in, and what the console says about it (needs neither Ray nor W&B)."""

from __future__ import annotations

import netrc
import os
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
