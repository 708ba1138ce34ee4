"""Paths in the model YAML: ``~`` and environment variables expanded as a shell would."""

from __future__ import annotations

from pathlib import Path


def expand_path(value: str | Path) -> Path:
    """``$VARIABLES`` / ``${VARIABLES}`` and a leading ``~`` expanded, as a shell would (a variable
    that is not set stays as written; :func:`unset_variables` names it)."""
    import os

    return Path(os.path.expanduser(os.path.expandvars(str(value))))


def unset_variables(value: str) -> list[str]:
    """The ``$NAME`` / ``${NAME}`` in ``value`` that the environment does not set."""
    import os
    import re

    names = [a or b for a, b in re.findall(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", value)]
    return list(dict.fromkeys(n for n in names if n not in os.environ))
