"""paramiko without invoke, unless ssh_config's ``Match exec`` needs it.

``paramiko.config`` imports invoke (about 50 ms, a third of paramiko's import)
only to run the commands of ``Match exec`` blocks. The package imports this
module before any of its modules imports paramiko: paramiko is imported here,
once, with ``import invoke`` failing at once (paramiko then records invoke as
missing). When a config has a ``Match exec`` line, :func:`give_paramiko_invoke`
hands invoke to paramiko before it reads the config, and paramiko runs the
command as it always does; without invoke installed, paramiko reports that when
it evaluates the Match, as it always does.
"""

from __future__ import annotations

import re
import sys

# A line that may be a `Match exec`: a false alarm only costs importing invoke.
MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)


def _import_paramiko_without_invoke() -> None:
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        return  # imported already: nothing left to spare
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
    try:
        import paramiko  # noqa: F401
    finally:
        del sys.modules["invoke"]


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


_import_paramiko_without_invoke()
