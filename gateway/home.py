"""Where the user's own things live: $AIF_HOME (default ~/.aif)."""

from __future__ import annotations

import os
from pathlib import Path


def aif_home() -> Path:
    """The user's aif directory; not created here."""
    value = os.environ.get("AIF_HOME")
    return Path(value).expanduser() if value else Path.home() / ".aif"
