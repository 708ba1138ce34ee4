"""The optuna-dashboard command for a study's storage (``hyper-opt report --dashboard``)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hyper_opt.schema import HyperConfig, StorageSpec

DASHBOARD_PORT = 8080


def dashboard_command(storage: StorageSpec, *, port: int = DASHBOARD_PORT, host: str = "127.0.0.1") -> str:
    """The ``optuna-dashboard`` command line that opens this storage (any password masked)."""
    from hyper_opt.secrets import mask_url

    if storage.kind == "journal":
        target = f"--storage-class JournalFileStorage {shlex.quote(str(storage.path))}"
    else:
        target = shlex.quote(mask_url(storage.url or ""))
    return f"optuna-dashboard {target} --host {host} --port {port}"


def dashboard_hint(config: HyperConfig) -> str:
    from hyper_opt.secrets import mask_url

    storage = config.optuna.storage
    lines = [dashboard_command(storage),
             f"  then open http://127.0.0.1:{DASHBOARD_PORT}/ (optuna-dashboard is the 'dashboard' extra: "
             "pip install 'hyper_opt[dashboard]'); it reads the study live from the same storage.",
             f"  from a laptop: ssh -L {DASHBOARD_PORT}:127.0.0.1:{DASHBOARD_PORT} LOGIN_NODE, and run the "
             "command on LOGIN_NODE."]
    if storage.url and mask_url(storage.url) != storage.url:
        lines.append("  the password is masked: put it back in place of ***, or remove ':***' and set "
                     "PGPASSWORD (PostgreSQL) in the environment instead.")
    return "\n".join(lines)

