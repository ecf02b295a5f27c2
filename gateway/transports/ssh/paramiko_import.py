"""paramiko without invoke (unless ssh_config's ``Match exec`` needs it) and without
``importlib.metadata``.

Two imports paramiko makes at start-up cost more than they serve aif:

- ``paramiko.config`` imports invoke (about 50 ms) only to run the commands of
  ``Match exec`` blocks. paramiko is imported here, once, with ``import invoke``
  failing at once (paramiko then records invoke as missing). When a config has a
  ``Match exec`` line, :func:`give_paramiko_invoke` hands invoke to paramiko before it
  reads the config, and paramiko runs the command as it always does; without invoke
  installed, paramiko reports that when it evaluates the Match, as it always does.
- ``paramiko/__init__`` imports ``importlib.metadata`` (about 15 ms with the email
  and zipfile modules it brings, measured beside everything else `aif status`
  imports) for one call, ``metadata.version("paramiko")``, which names paramiko's
  version in its SSH banner. While paramiko is imported, ``importlib.metadata`` is a
  stand-in whose ``version`` reads the same number from the name of the installed
  ``NAME-VERSION.dist-info`` directory; anything else asked of it (or a name not
  found that way) loads the real module and answers from it. The stand-in is gone
  once paramiko is imported.

The package imports this module before any of its modules imports paramiko.
"""

from __future__ import annotations

import os
import re
import sys
import types
from typing import Any

# A line that may be a `Match exec`: a false alarm only costs importing invoke.
MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)

_METADATA = "importlib.metadata"


def installed_version(distribution: str) -> str | None:
    """The version in the first ``DISTRIBUTION-VERSION.dist-info`` on ``sys.path``; None if none."""
    prefix = re.sub(r"[-_.]+", "_", distribution).lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and name.lower().startswith(prefix):
                return name[len(prefix) : -len(".dist-info")]
    return None


class _MetadataStandIn(types.ModuleType):
    """``importlib.metadata`` while paramiko is imported: ``version`` from the dist-info's name."""

    def __init__(self) -> None:
        super().__init__(_METADATA)

    def version(self, distribution: str) -> str:
        found = installed_version(distribution)
        return found if found is not None else str(self.__getattr__("version")(distribution))

    def __getattr__(self, name: str) -> Any:
        # Anything else: the real module, loaded now (the stand-in steps aside first).
        if sys.modules.get(_METADATA) is self:
            del sys.modules[_METADATA]
        import importlib.metadata as real

        return getattr(real, name)


def _import_paramiko_lightly() -> None:
    if "paramiko" in sys.modules:
        return  # imported already: nothing left to spare
    spare_invoke = "invoke" not in sys.modules
    spare_metadata = _METADATA not in sys.modules
    stand_in = _MetadataStandIn()
    if spare_invoke:
        sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
    if spare_metadata:
        sys.modules[_METADATA] = stand_in
    try:
        import paramiko  # noqa: F401
    finally:
        if spare_invoke:
            del sys.modules["invoke"]
        if sys.modules.get(_METADATA) is stand_in:
            del sys.modules[_METADATA]


def give_paramiko_invoke() -> None:
    """Import invoke for paramiko's ``Match exec``, if it was left out and is installed."""
    import paramiko.config as paramiko_config

    if vars(paramiko_config).get("invoke") is not None:
        return
    try:
        import invoke
    except ImportError as exc:
        paramiko_config.invoke_import_error = exc
        return
    # The module global paramiko's Match evaluation reads (its stubs do not declare it).
    vars(paramiko_config)["invoke"] = invoke


_import_paramiko_lightly()
