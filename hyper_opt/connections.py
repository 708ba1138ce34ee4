"""Will the database take the search's connections? ``optimize`` asks before it starts workers.

Every worker holds about :data:`hyper_opt.storage.CONNECTIONS_PER_WORKER` connections to the study's
PostgreSQL for as long as it runs. A server accepts ``max_connections`` minus the slots reserved for
superusers, shared with everyone else's sessions, and a role or database may have a ``CONNECTION
LIMIT`` of its own. Workers past that limit are refused ("too many clients", SQLSTATE 53300),
retry for ``optuna:db_retry_seconds`` and then fail. This module compares the planned workers
with what the server has left (one short connection, read-only) and words a warning with the
fixes: fewer workers, PgBouncer in transaction mode in front of the server (docs/scale.md), or a
larger ``max_connections``.

Behind a connection pooler the server never sees the workers' connections, only the pooler's few:
when the server reports another port than the URL names (``current_setting('port')``), a pooler
is in between and the check is skipped with a note.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5

_QUERY = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       current_setting('port')::int,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND usename = current_user),
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database()),
       r.rolconnlimit, r.rolsuper, d.datconnlimit, current_user, current_database()
  FROM pg_roles r, pg_database d
 WHERE r.rolname = current_user AND d.datname = current_database()
"""


@dataclass(frozen=True)
class ServerConnections:
    """What a PostgreSQL server allows and has in use (besides the connection that asked)."""

    max_connections: int
    reserved: int  # superuser_reserved_connections (+ reserved_connections, PostgreSQL 16+)
    in_use: int  # client backends of every user and database
    role: str
    role_limit: int  # -1: none
    role_in_use: int
    superuser: bool
    database: str
    database_limit: int  # -1: none
    database_in_use: int
    server_port: int
    url_port: int

    @property
    def available(self) -> int:
        """Connection slots for this role across the server (superusers may use the reserved ones)."""
        return self.max_connections - (0 if self.superuser else self.reserved)

    @property
    def pooled(self) -> bool:
        """A pooler (PgBouncer) answers on the URL's port: the server listens on another one."""
        return self.server_port != self.url_port


def server_connections(url: str) -> ServerConnections:
    """Read the server's limits and current connections with one short connection."""
    import sqlalchemy

    from hyper_opt.storage import driver_connect_args

    parsed = sqlalchemy.make_url(url)
    url_port = parsed.port or int(parsed.query.get("port", 0) or os.environ.get("PGPORT") or 5432)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                                                    **driver_connect_args(url)})
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text(_QUERY)).one()
    finally:
        engine.dispose()
    (max_conn, su_reserved, reserved, port, in_use, role_in_use, db_in_use, role_limit, superuser,
     db_limit, role, database) = row
    return ServerConnections(
        max_connections=max_conn, reserved=su_reserved + reserved, in_use=in_use, role=role,
        role_limit=role_limit, role_in_use=role_in_use, superuser=bool(superuser), database=database,
        database_limit=db_limit, database_in_use=db_in_use, server_port=port, url_port=url_port)


@dataclass(frozen=True)
class Verdict:
    """``level``: "ok" (fits), "warn" (does not fit), "note" (not checked, and why)."""

    level: str
    text: str


def planned_workers(config: Any, scheduler: str | None, *, remaining: int) -> tuple[int, str]:
    """How many workers the search may run at once, and how that number came about."""
    if scheduler is None:
        n = config.local_workers
        return n, f"{n} local worker(s)"
    if scheduler == "pbs":
        from hyper_opt.launch.pbs import _jobs_needed, workers_per_job

        per_job = workers_per_job(config)
        jobs = _jobs_needed(config, remaining)
        return jobs * per_job, f"{jobs} PBS job(s) x {per_job} worker(s), if they all run at once"
    from hyper_opt.launch.slurm import _jobs_needed, requested_gpus, sbatch_parameters

    spec = config.slurm
    gpus = requested_gpus(sbatch_parameters(config))
    per_job = spec.workers_per_job if spec.gpus_per_node or not gpus else gpus * spec.tasks_per_worker
    jobs = _jobs_needed(config, remaining)
    return jobs * per_job, f"{jobs} Slurm job(s) x {per_job} worker(s), if they all run at once"


def assess(workers: int, how: str, server: ServerConnections, *, per_worker: int, where: str) -> Verdict:
    """Compare ``workers`` x ``per_worker`` connections with what ``server`` has left."""
    needed = workers * per_worker
    plan = f"{how} x {per_worker} connection(s) each = {needed} connections"
    if server.pooled:
        return Verdict("note", (
            f"{where} answers on port {server.url_port} but the PostgreSQL server behind it listens on "
            f"{server.server_port}: a connection pooler (PgBouncer) is in between, so its pool size, not "
            f"the workers, bounds the server's connections (max_connections {server.max_connections}); "
            f"the connection check is skipped ({plan})"))
    limits = [("the server", server.available - server.in_use,
               f"max_connections {server.max_connections}"
               + (f" - {server.reserved} reserved for superusers" if server.reserved and not server.superuser else "")
               + f", {server.in_use} in use now")]
    if server.role_limit >= 0:
        limits.append((f"role {server.role}", server.role_limit - server.role_in_use,
                       f"CONNECTION LIMIT {server.role_limit}, {server.role_in_use} in use now"))
    if server.database_limit >= 0:
        limits.append((f"database {server.database}", server.database_limit - server.database_in_use,
                       f"CONNECTION LIMIT {server.database_limit}, {server.database_in_use} in use now"))
    what, left, detail = min(limits, key=lambda item: item[1])
    left = max(left, 0)
    if needed <= left:
        return Verdict("ok", f"{plan}; {where} has {left} left ({detail})")
    fit = left // per_worker
    return Verdict("warn", (
        f"the search plans {plan}, but {what} at {where} has only {left} left ({detail}): "
        f"{needed - left} short. Workers that cannot connect are refused ('too many clients'), retry for "
        f"optuna:db_retry_seconds and then fail. Fixes: run at most {fit} worker(s) at once (fewer "
        f"local:workers or slurm/pbs jobs), or put PgBouncer in transaction mode in front of the server "
        f"and give its URL as optuna:storage (docs/scale.md), or raise max_connections in postgresql.conf "
        f"(a server restart)"))


def check(config: Any, workers: int, how: str) -> Verdict | None:
    """The verdict for a search's storage, or None when it is not PostgreSQL."""
    from hyper_opt.secrets import mask_url
    from hyper_opt.storage import CONNECTIONS_PER_WORKER

    st = config.optuna.storage
    url = st.url or ""
    if st.kind != "url" or not url.startswith(("postgresql", "postgres:")):
        return None
    where = mask_url(url)
    try:
        server = server_connections(url)
    except Exception as err:  # noqa: BLE001 - a check, never a reason to stop by itself
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Verdict("note", f"could not read max_connections from {where} ({first}); connections not checked")
    return assess(workers, how, server, per_worker=CONNECTIONS_PER_WORKER, where=where)


def report(config: Any, scheduler: str | None, *, remaining: int) -> Verdict | None:
    """Check and log: a warning when the connections do not fit, an info line otherwise."""
    workers, how = planned_workers(config, scheduler, remaining=remaining)
    verdict = check(config, workers, how)
    if verdict is None:
        return None
    if verdict.level == "warn":
        logger.warning("database connections: %s", verdict.text)
    else:
        logger.info("database connections: %s", verdict.text)
    return verdict
