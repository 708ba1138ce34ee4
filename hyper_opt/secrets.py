"""Overrides that hold a secret (a database password) travel to workers out of sight.

``--set optuna:storage=postgresql://user:PASSWORD@host/db`` must reach every worker, but a
worker's command line is visible to every user of the machine (``ps``), and Slurm jobs are
pickled by submitit into ``save_path/slurm/`` (often world-readable). When any override holds
a secret, the whole list (its order matters) goes in the environment variable
``HYPER_OPT_OVERRIDES`` instead: ``/proc/PID/environ`` is readable by the owner only, local
workers inherit it from ``optimize``, Slurm jobs from ``sbatch`` (which exports the submitting
environment), and the worker removes it from its own environment before user code runs. The
safest choice is still no password in any URL: PostgreSQL reads ``PGPASSWORD`` or ``~/.pgpass``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping, Sequence

from hyper_opt.exceptions import ConfigError

ENV = "HYPER_OPT_OVERRIDES"
_SECRET_KEYS = ("password", "passwd", "secret", "token")
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pwd|sslpassword)=)[^&]*", re.I)


def mask_url(url: str) -> str:
    """The URL with any password (``user:pw@``, ``:pw@``, ``?password=``) replaced by ``***``,
    for logs, messages and the config handed to user code.

    A password may hold an unquoted ``@`` (``u:p@ss@host``): the user part ends at the last ``@``
    before the query. The result is rendered by SQLAlchemy's URL when it parses."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    head, sep, query = rest.partition("?")
    at = head.rfind("@")
    if at >= 0:
        user, colon, password = head[:at].partition(":")
        head = (f"{user}:***" if colon else user) + "@" + head[at + 1:]
    query = _SECRET_QUERY.sub(r"\1***", sep + query)[1:] if sep else ""
    masked = f"{scheme}://{head}{sep}{query}"
    try:
        import sqlalchemy

        return sqlalchemy.make_url(masked).render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")
    except Exception:  # not a URL SQLAlchemy knows: the masked text as it is
        return masked


def is_secret(override: str) -> bool:
    """True when the override's value holds a password (a URL with one) or its key names one."""
    key, _, value = override.partition("=")
    return mask_url(value) != value or any(k in key.lower() for k in _SECRET_KEYS)


def for_worker(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the overrides for a worker's argv, the environment entries that carry the rest)."""
    if any(is_secret(o) for o in overrides):
        return [], {ENV: json.dumps(list(overrides))}
    return list(overrides), {}


def take_from_env(argv_overrides: Sequence[str], environ: MutableMapping[str, str] | None = None, *,
                  keep: bool = False) -> list[str]:
    """The overrides a worker was given: from ``HYPER_OPT_OVERRIDES`` when set (then removed
    from the environment unless ``keep``), else the ones on its command line."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV) if keep else environ.pop(ENV, None)
    if text is None:
        return list(argv_overrides)
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError([f"the environment variable {ENV} must hold a JSON list of --set overrides"])
    return [*value, *(o for o in argv_overrides if o not in value)]


def without_secrets(argv: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``argv`` without the ``--set`` arguments (``--set X``, ``--set=X``) that hold a secret."""
    secret = [o for o in overrides if is_secret(o)]
    out: list[str] = []
    for arg in argv:
        if arg in secret and out and out[-1].startswith("--s") and "--set".startswith(out[-1]):
            out.pop()  # --set (or an abbreviation argparse accepts) and its value
        elif not any(arg.endswith("=" + o) and "--set".startswith(arg[:-len(o) - 1]) for o in secret):
            out.append(arg)
    return out


def scrub_command_line(overrides: Sequence[str]) -> None:
    """Re-execute this process without the ``--set`` overrides that hold a password, which then
    travel in ``HYPER_OPT_OVERRIDES`` (all of them, in order; :func:`take_from_env` reads them).

    For the commands that run for the whole search (``optimize --local``): a process's command
    line is readable by every user of the machine for as long as it runs (``/proc/PID/cmdline``),
    and Python cannot rewrite its own portably (``sys.argv`` is a copy; setproctitle is not a
    dependency). ``exec`` keeps the pid, the environment and the open terminal. Nothing happens
    when no override holds a secret, or when they are not on this process's command line (a
    call of ``main`` from Python)."""
    import sys

    argv = list(getattr(sys, "orig_argv", ()))
    cleaned = without_secrets(argv, overrides)
    if not argv or cleaned == argv:
        return
    os.environ[ENV] = json.dumps(list(overrides))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.execv(sys.executable, cleaned)


@contextlib.contextmanager
def exported(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in this process's environment for the block (what ``sbatch`` passes on)."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
