"""The optuna study: create-or-load, enqueue, and the global budget.

The study in the storage is the single source of truth: every other file hyper_opt writes is
derived from it. It is created (and ``enqueue`` applied) once, by ``optimize`` or by the first
worker, under the budget lock, so that concurrent workers never race on the schema or duplicate
enqueued trials.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyper_opt.exceptions import ConfigError, StudyExistsError
from hyper_opt.registry import make_pruner, make_sampler, quiet_experimental, worker_sampler  # noqa: F401 - re-exported
from hyper_opt.schema import HyperConfig
from hyper_opt.budget_lock import BudgetLock, NoLock
from hyper_opt.storage import describe, is_connection_error, make_storage, with_db_retry

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

ENQUEUED_ATTR = "hyper_opt:enqueued"


def _load(config: HyperConfig, storage: Any, *, worker_index: int, conn: Any = None) -> optuna.Study:
    """The study with this worker's sampler and pruner; ``conn``: the claim's connection when
    called inside :meth:`BudgetLock.transaction` (a worker's pool has no other connection)."""
    import optuna

    return optuna.load_study(
        study_name=config.optuna.study_name,
        storage=storage,
        sampler=worker_sampler(config.optuna.sampler, storage, config.optuna.study_name,
                               worker_index=worker_index, conn=conn),
        pruner=make_pruner(config.optuna.pruner),
    )


def study_exists(storage: Any, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


@dataclass
class Opened:
    """A study with its storage and lock, as one worker or command holds them."""

    study: optuna.Study
    storage: Any
    lock: BudgetLock | NoLock  # NoLock for a study opened only to read it (read_study)
    study_id: int


def open_study(config: HyperConfig, *, create: bool, check_reload: bool = False, replace: bool = False,
               worker_index: int = 0, worker: bool = False, schema_checked: bool = False) -> Opened:
    """Load the study, creating it (and enqueueing its seed trials) when missing and ``create``.

    ``worker``: the storage of a worker process (one connection to a database server, see
    :data:`hyper_opt.storage.CONNECTIONS_PER_WORKER`). ``schema_checked``: see
    :func:`hyper_opt.storage.make_storage`. On PostgreSQL the creation is one
    transaction under the budget lock (:meth:`BudgetLock.transaction`).

    ``check_reload`` (for ``optimize``): an existing study with trials is only continued when
    ``reload`` is set; otherwise :class:`StudyExistsError` says how to continue or replace it.
    ``replace`` deletes an existing study first, refusing while any trial is RUNNING.
    """
    spec = config.optuna
    claim_save_path(config, write=False)
    if (check_reload and spec.reload_explicit and spec.storage.path is not None
            and not spec.storage.path.exists()):  # before opening it creates an empty file there
        raise StudyExistsError(_not_found_message(config, None))
    storage = with_db_retry(lambda: make_storage(spec, worker=worker, schema_checked=schema_checked),
                            seconds=spec.db_retry_seconds if create else 30, what="opening the study storage")
    lock = BudgetLock(spec)
    # Under the retry: a connection error here (on PostgreSQL, in the one transaction) is waited
    # out like any other storage call, not a worker that dies at its start.
    study, study_id = with_db_retry(
        lambda: _create_or_load(config, storage, lock, create=create, check_reload=check_reload, replace=replace,
                                worker_index=worker_index),
        seconds=spec.db_retry_seconds if create else 30, what="opening the study")
    return Opened(study=study, storage=storage, lock=lock, study_id=study_id)


def _create_or_load(config: HyperConfig, storage: Any, lock: BudgetLock, *, create: bool, check_reload: bool,
                    replace: bool, worker_index: int) -> tuple[optuna.Study, int]:
    """open_study's work under the budget lock (on PostgreSQL one transaction): the study and its id."""
    import optuna

    spec = config.optuna
    if create and not (check_reload or replace) and lock.atomic(storage):
        loaded = _load_existing(config, storage, worker_index=worker_index)
        if loaded is not None:
            return loaded
    with lock.transaction(storage) as conn:
        exists = study_exists(storage, spec.study_name)
        if exists and (check_reload or replace):
            study_id = storage.get_study_id_from_name(spec.study_name)
            trials = storage.get_all_trials(study_id, deepcopy=False)
            if trials and replace:
                running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
                if running:
                    raise StudyExistsError(
                        f"--replace refused: study {spec.study_name!r} in {describe(spec.storage)} has "
                        f"RUNNING trials {running[:10]}; cancel its workers first")
                logger.warning("--replace: deleting study %r (%d trials)", spec.study_name, len(trials))
                optuna.delete_study(study_name=spec.study_name, storage=storage)
                exists = False
            elif trials and spec.reload and not spec.reload_explicit and check_reload:
                logger.info("%s is in echo-opt's format without optuna:reload: study %r (%d trials) is "
                            "continued, as echo-opt did (set 'reload: 0' to refuse an existing study)",
                            config.hyper_path.name, spec.study_name, len(trials))
            elif trials and not spec.reload:
                finished = sum(t.state.is_finished() for t in trials)
                raise StudyExistsError(
                    f"study {spec.study_name!r} in {describe(spec.storage)} already holds {len(trials)} "
                    f"trials ({finished} finished) and optuna:reload is 0. To continue it, set "
                    f"'optuna: reload: 1' in {config.hyper_path.name} or pass --reload; to start a new "
                    f"study, change optuna:study_name; to delete it and start over, pass --replace. "
                    f"Nothing was changed.")
        if not exists and check_reload and spec.reload_explicit:
            raise StudyExistsError(_not_found_message(config, storage))
        if not exists:
            if not create:
                raise StudyExistsError(
                    f"study {spec.study_name!r} does not exist in {describe(spec.storage)}; "
                    f"run 'hyper-opt optimize {config.hyper_path.name} MODEL.yml' first")
            optuna.create_study(study_name=spec.study_name, storage=storage,
                                directions=list(spec.directions))
            logger.info("created study %r in %s", spec.study_name, describe(spec.storage))
        study = _load(config, storage, worker_index=worker_index, conn=conn)
        found = [d.name.lower() for d in study.directions]
        if found != list(spec.directions):
            raise ConfigError([f"optuna:direction: the study {spec.study_name!r} was created with "
                               f"{found}, the config asks for {list(spec.directions)}"],
                              source=str(config.hyper_path))
        if spec.enqueue and not study.user_attrs.get(ENQUEUED_ATTR):
            for params in spec.enqueue:
                study.enqueue_trial(dict(params), skip_if_exists=True)
            study.set_user_attr(ENQUEUED_ATTR, True)
            logger.info("enqueued %d trial(s) from optuna:enqueue", len(spec.enqueue))
        if create:
            claim_save_path(config, write=True)
    return study, storage.get_study_id_from_name(spec.study_name)


def _load_existing(config: HyperConfig, storage: Any, *, worker_index: int) -> tuple[optuna.Study, int] | None:
    """A worker's opening of a study its launcher set up, without the budget lock (on PostgreSQL
    it serialised every worker's start-up: 512 took over a minute in benchmarks/fleet.py); None
    when there is work for the lock: a study to create, trials to enqueue, directions to refuse."""
    spec = config.optuna
    try:
        study_id = storage.get_study_id_from_name(spec.study_name)
    except KeyError:
        return None
    study = _load(config, storage, worker_index=worker_index)
    if ([d.name.lower() for d in study.directions] != list(spec.directions)
            or (spec.enqueue and not study.user_attrs.get(ENQUEUED_ATTR))):
        return None
    claim_save_path(config, write=True)
    return study, study_id


def read_study(config: HyperConfig) -> Opened:
    """Open an existing study only to read it (``status``, ``report``, ``rerun``, ``test``, a job
    deciding whether to requeue): no budget lock is taken, nothing is created or enqueued."""
    spec = config.optuna
    if spec.storage.path is not None and not spec.storage.path.exists():
        raise StudyExistsError(f"study {spec.study_name!r} does not exist: {spec.storage.path} is not there; "
                               f"run 'hyper-opt optimize {config.hyper_path.name} MODEL.yml' first")
    storage = with_db_retry(lambda: make_storage(spec), seconds=30, what="opening the study storage")
    if not study_exists(storage, spec.study_name):
        raise StudyExistsError(
            f"study {spec.study_name!r} does not exist in {describe(spec.storage)}; "
            f"run 'hyper-opt optimize {config.hyper_path.name} MODEL.yml' first")
    study = _load(config, storage, worker_index=0)
    return Opened(study=study, storage=storage, lock=NoLock(), study_id=storage.get_study_id_from_name(spec.study_name))


def _not_found_message(config: HyperConfig, storage: Any) -> str:
    """reload was asked for but the study is not there: say where it was looked for."""
    spec = config.optuna
    where = describe(spec.storage)
    if spec.storage.path is not None and not spec.storage.path.exists():
        found = f"{spec.storage.path} does not exist"
    else:
        try:
            names = [s.study_name for s in storage.get_all_studies()]
        except Exception:  # noqa: BLE001 - only for the message
            names = []
        found = f"it holds the studies {names}" if names else "it holds no study"
    base = (f"; relative paths in {config.hyper_path.name} are read from {config.base_dir} "
            f"({'the working directory, as ' + config.format + ' did' if config.format != 'hyper_opt' else 'its folder'})"
            if config.base_dir is not None else "")
    return (f"optuna:reload is 1 but there is no study {spec.study_name!r} in {where} ({found}){base}. "
            "Nothing was created. Run from the folder the study was started from, or fix save_path/storage "
            "and study_name; set 'reload: 0' to start a new study.")


SAVE_PATH_OWNER = ".hyper_opt_study"


def claim_save_path(config: HyperConfig, *, write: bool) -> None:
    """One study per ``save_path``: its per-trial files (``trials/trial_N.csv``,
    ``checkpoints/trial_N/``, ``unrecorded/``, ``logs/``) are keyed by trial number, so a second
    study there would resume from, and then delete, the first one's checkpoints. The folder's
    owner is recorded in ``save_path/.hyper_opt_study``; another study is refused, with how to
    fix it. A folder from before this file existed is adopted by the first study that writes."""
    path = config.save_path / SAVE_PATH_OWNER
    name = config.optuna.study_name
    try:
        owner = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        owner = ""
    if owner and owner != name:
        raise StudyExistsError(
            f"save_path {config.save_path} already holds the files of study {owner!r}; study {name!r} "
            f"needs a save_path of its own (set save_path in {config.hyper_path.name}, e.g. "
            f"'save_path: {config.save_path.name}_{name}'), or use optuna:study_name {owner!r} to "
            f"continue that study. Nothing was changed.")
    if write and not owner:
        from hyper_opt.results import atomic_write_text

        atomic_write_text(path, name + "\n")


def counts(opened: Opened, conn: Any = None) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING).

    On an RDB storage this is one ``COUNT ... GROUP BY`` on optuna's ``trials`` table instead of
    loading every trial (5 s a trial at 10,000 trials otherwise); any other storage, or a schema
    that does not answer, falls back to optuna's public ``get_all_trials``. ``conn``: the claim's
    connection (:meth:`BudgetLock.transaction`), else one from the storage's engine.
    """
    import optuna

    result = {s.name: 0 for s in optuna.trial.TrialState}
    if isinstance(opened.storage, optuna.storages.RDBStorage):
        import sqlalchemy

        query = sqlalchemy.text("SELECT state, COUNT(*) FROM trials WHERE study_id = :sid GROUP BY state")
        try:
            if conn is not None:  # optuna's schema, checked when the storage opened: no savepoint
                rows = conn.execute(query, {"sid": opened.study_id}).fetchall()
            else:
                with opened.storage.engine.connect() as own:
                    rows = own.execute(query, {"sid": opened.study_id}).fetchall()
            names = [(getattr(state, "name", str(state)), int(n)) for state, n in rows]
            if all(name in result for name, _ in names):  # an unknown state must not go uncounted
                for name, n in names:
                    result[name] += n
                return result
            logger.warning("unknown trial states %s in the trials table; counting the slow way",
                           sorted({name for name, _ in names if name not in result}))
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
            if is_connection_error(err):  # an outage, not another schema: the caller retries
                raise
            # another schema (PostgreSQL raises ProgrammingError, SQLite OperationalError)
        result = {s.name: 0 for s in optuna.trial.TrialState}
    for trial in opened.storage.get_all_trials(opened.study_id, deepcopy=False):
        result[trial.state.name] += 1
    return result


def n_finished(c: dict[str, int]) -> int:
    """Finished trials count toward the budget: COMPLETE and PRUNED (FAIL does not)."""
    return c["COMPLETE"] + c["PRUNED"]


def best_summary(study: optuna.Study) -> str:
    """"best 0.1234 (trial 7)" or "" when nothing completed yet."""
    try:
        if len(study.directions) > 1:
            best = study.best_trials
            return f"{len(best)} Pareto-optimal trial(s)" if best else ""
        trial = study.best_trial
    except ValueError:
        return ""
    return f"best {trial.value:.6g} (trial {trial.number})"


def fail_stale_trials(study: optuna.Study) -> None:
    """optuna's stale-trial check (marked experimental, stable since 2.9), without its warning."""
    import optuna

    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)


def fail_silent_trials(opened: Opened, *, grace_period: float) -> list[int]:
    """Fail (and re-queue, like optuna's stale trials) RUNNING trials that never recorded a
    heartbeat and started more than ``grace_period`` seconds ago.

    optuna's stale check skips trials without a heartbeat, so a worker that died between
    ``ask`` and its first heartbeat left a trial that nobody ever failed, and every other worker
    waited for it for ever. Workers record the first heartbeat inside the claim, under the budget
    lock that the caller holds, so a live worker's trial is never seen here without one. One
    query on optuna's ``trials`` and ``trial_heartbeats`` tables; other storages have no heartbeat.
    """
    import datetime as dt

    import optuna

    storage = opened.storage
    if not isinstance(storage, optuna.storages.RDBStorage):
        return []
    import sqlalchemy

    cutoff = dt.datetime.now() - dt.timedelta(seconds=grace_period)
    try:
        with storage.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT t.trial_id, t.number FROM trials t LEFT JOIN trial_heartbeats h "
                "ON h.trial_id = t.trial_id WHERE t.study_id = :sid AND t.state = 'RUNNING' "
                "AND h.trial_id IS NULL AND t.datetime_start < :cutoff"),
                {"sid": opened.study_id, "cutoff": cutoff}).fetchall()
    except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
        if is_connection_error(err):
            raise
        logger.warning("cannot look for RUNNING trials without a heartbeat: %s", str(err).splitlines()[0])
        return []
    return [number for trial_id, number in rows if _fail_and_requeue(opened, trial_id, number, grace_period, silent=True)]


def _fail_and_requeue(opened: Opened, trial_id: int, number: int, grace_period: float, *, silent: bool) -> bool:
    """Fail a stale trial and re-queue its copy (the storage's stale-trial callback), as optuna's
    ``fail_stale_trials`` does; a trial that never beat gets an ``error`` saying so. False when
    another process finished or failed it first (only one process makes the copy)."""
    import optuna

    storage = opened.storage
    try:
        if silent:
            storage.set_trial_user_attr(trial_id, "error", f"RUNNING with no heartbeat for more than "
                                        f"{grace_period:.0f} s (grace_period): its worker died as it started")
        if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if silent:
        logger.warning("trial %d was RUNNING without a heartbeat for more than %.0f s; marked FAIL",
                       number, grace_period)
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        callback(opened.study, storage.get_trial(trial_id))
    return True


def fail_stale_on_server(opened: Opened, *, interval_s: float, grace_period: float) -> list[int] | None:
    """On PostgreSQL, optuna's stale check and :func:`fail_silent_trials` for the whole study, by
    whichever worker takes the study's scan turn (one per ``interval_s``; one statement that reads
    only the trials after the counted prefix, see :mod:`hyper_opt.server_side`). The numbers of the
    trials failed (and re-queued); None when another worker had the turn."""
    from hyper_opt import server_side

    rows = server_side.stale_trials(opened.storage, study_id=opened.study_id, interval_s=interval_s,
                                    grace_s=grace_period)
    if rows is None:
        return None
    return [number for trial_id, number, silent in rows
            if _fail_and_requeue(opened, trial_id, number, grace_period, silent=silent)]


def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``; optuna warns that heartbeats are meant for ``optimize``, but hyper_opt
    runs the heartbeat itself (see hyper_opt.worker)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask()


def trial_store(study: optuna.Study) -> Any:
    """The storage a Study reads through: for an RDB storage, optuna's cache in front of it.
    Trials are created and popped through it, as ``Study.ask`` does, so that the Study (and the
    sampler) knows them; a created trial the cache does not know cannot take parameters."""
    return getattr(study, "_storage")


def start_trial(opened: Opened, *, waiting: bool, owner: dict[str, Any] | None = None) -> tuple[int, int | None]:
    """What ``Study.ask`` does in the storage, without building the ``optuna.Trial`` (where the
    sampler runs): pop the first WAITING trial (set RUNNING, which fails if another process got
    it first) when ``waiting`` says there are some, else create a new RUNNING trial. Returns the
    trial id and, for a re-queued copy, the number of the trial it retries.

    ``owner``: user attributes (the worker's run context) that a new trial is created with, in
    the same write: where the claim is no transaction (the journal storage, with no heartbeat),
    a worker killed right after creating it leaves a trial whose owner is known, which
    ``optimize`` fails once that worker is gone."""
    import optuna

    store = trial_store(opened.study)
    if waiting:
        for frozen in store.get_all_trials(opened.study_id, deepcopy=False,
                                           states=(optuna.trial.TrialState.WAITING,)):
            trial_id = store.get_trial_id_from_study_id_trial_number(opened.study_id, frozen.number)
            try:
                if not store.set_trial_state_values(trial_id, state=optuna.trial.TrialState.RUNNING):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            return trial_id, frozen.system_attrs.get("failed_trial")
    if owner:
        template = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs=owner)
        return store.create_new_trial(opened.study_id, template_trial=template), None
    return store.create_new_trial(opened.study_id), None


def make_trial(opened: Opened, trial_id: int) -> optuna.Trial:
    """The ``optuna.Trial`` of a started trial, as ``Study.ask`` builds it (the sampler's
    ``before_trial`` runs here; relative sampling at the first suggestion)."""
    import optuna

    return optuna.Trial(opened.study, trial_id)


def remember_trial(opened: Opened, trial_id: int, *, number: int, started_utc: Any, popped: bool) -> None:
    """Make the Study's optuna cache know a trial that hyper_opt's server-side claim started behind
    its back (optuna's cache refuses parameters for a trial it does not know), as optuna's own
    calls would have: a new trial is added as ``create_new_trial`` adds it (a RUNNING FrozenTrial
    with no attributes); a popped WAITING trial by optuna's incremental read of the study, which
    ``Study.ask`` makes before it pops one. Adding the new trial directly uses the cache's private
    ``_add_trials_to_cache`` (one trial, no query: the incremental read costs a read of every
    unfinished trial, which grows with the number of workers); where an optuna release lacks it,
    the read is made instead."""
    import datetime as dt

    import optuna

    store = trial_store(opened.study)
    add = getattr(store, "_add_trials_to_cache", None)
    studies = getattr(store, "_studies", None)
    lock = getattr(store, "_lock", None)
    if popped or add is None or lock is None or not isinstance(studies, dict) or opened.study_id not in studies:
        store.get_all_trials(opened.study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return
    local = started_utc.replace(tzinfo=dt.timezone.utc).astimezone().replace(tzinfo=None) if started_utc else None
    frozen = optuna.trial.FrozenTrial(
        number=number, state=optuna.trial.TrialState.RUNNING, value=None, values=None, datetime_start=local,
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=trial_id)
    with lock:
        add(opened.study_id, [frozen])


def reload_study(opened: Opened) -> None:
    """A fresh Study object (same sampler and pruner, so no seed repeats): after a claim's
    transaction was rolled back, optuna's cache may hold a trial that does not exist."""
    import optuna

    opened.study = optuna.load_study(study_name=opened.study.study_name, storage=opened.storage,
                                     sampler=opened.study.sampler, pruner=opened.study.pruner)


def set_user_attrs(opened: Opened, trial_id: int, attrs: dict[str, Any], conn: Any = None) -> None:
    """Set several user attributes of a RUNNING trial: one upsert statement on an RDB storage
    (in ``conn``'s transaction when given) instead of one INSERT each; optuna's
    ``set_trial_user_attr`` per key on other storages or when the statement fails."""
    import json

    import optuna

    if not attrs:
        return
    storage = opened.storage
    dialect = storage.engine.dialect.name if isinstance(storage, optuna.storages.RDBStorage) else ""
    if dialect in ("postgresql", "sqlite", "mysql"):
        import sqlalchemy

        rows = ", ".join(f"(:t, :k{i}, :v{i})" for i in range(len(attrs)))
        upsert = ("ON DUPLICATE KEY UPDATE value_json = VALUES(value_json)" if dialect == "mysql"
                  else "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json")
        statement = sqlalchemy.text(f"INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                                    f"VALUES {rows} {upsert}")
        params: dict[str, Any] = {"t": trial_id}
        for i, (key, value) in enumerate(attrs.items()):
            params[f"k{i}"], params[f"v{i}"] = key, json.dumps(value)
        if conn is not None:  # in the claim's transaction, where no fallback could follow a failure
            conn.execute(statement, params)
            return
        try:
            with storage.engine.begin() as own:
                own.execute(statement, params)
            return
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
            if is_connection_error(err):
                raise
            logger.warning("cannot write trial attributes in one statement (%s); one by one",
                           str(err).splitlines()[0])
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def first_heartbeat(opened: Opened, trial_id: int, conn: Any = None) -> None:
    """Record a new trial's first heartbeat. In the claim's transaction (``conn``, PostgreSQL) at
    the server's clock time (``clock_timestamp()``), not at the transaction's start (optuna's
    ``now()``), which is before the wait for the budget lock: a worker that waited longer than
    ``grace_period`` would otherwise start a trial that others see as stale."""
    if conn is None:
        opened.storage.record_heartbeat(trial_id)
        return
    import sqlalchemy

    conn.execute(sqlalchemy.text(
        "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:t, clock_timestamp()) "
        "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat"), {"t": trial_id})


def _as_datetime(value: Any) -> Any:
    """A DATETIME column read by plain SQL: a datetime, or on SQLite its ISO text."""
    import datetime as dt

    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def recent_durations(opened: Opened, n: int = 50) -> list[float]:
    """Durations in seconds of the study's last ``n`` COMPLETE trials, oldest first: one query
    on an RDB storage (not every trial of a 10,000-trial study), optuna's API elsewhere."""
    import optuna

    storage = opened.storage
    if isinstance(storage, optuna.storages.RDBStorage):
        import sqlalchemy

        try:
            with storage.engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text(
                    "SELECT datetime_start, datetime_complete FROM trials WHERE study_id = :sid "
                    "AND state = 'COMPLETE' ORDER BY number DESC LIMIT :n"),
                    {"sid": opened.study_id, "n": n}).fetchall()
            return [(_as_datetime(done) - _as_datetime(start)).total_seconds()
                    for start, done in reversed(rows) if start and done]
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
            if is_connection_error(err):
                raise
    done = storage.get_all_trials(opened.study_id, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in done[-n:]
            if t.datetime_start and t.datetime_complete]


def finished_numbers(opened: Opened) -> list[int]:
    """The numbers of the study's finished trials (COMPLETE, PRUNED, FAIL): one query of one
    column on an RDB storage, optuna's API elsewhere."""
    import optuna

    storage = opened.storage
    if isinstance(storage, optuna.storages.RDBStorage):
        import sqlalchemy

        with storage.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT number FROM trials WHERE study_id = :sid AND state IN ('COMPLETE', 'PRUNED', 'FAIL')"),
                {"sid": opened.study_id}).fetchall()
        return sorted(int(n) for (n,) in rows)
    TS = optuna.trial.TrialState
    return [t.number for t in storage.get_all_trials(opened.study_id, deepcopy=False,
                                                     states=(TS.COMPLETE, TS.PRUNED, TS.FAIL))]


def fail_running_trials(opened: Opened, reason: Any, *, max_retry: int) -> list[int]:
    """Mark FAIL the RUNNING trials for which ``reason(trial)`` gives a message (stored as the
    trial's ``error``), and re-queue a copy of each within ``max_retry``; return their numbers.
    A trial that finished meanwhile is left as it is. Used for the trials of local workers that
    died, of cancelled jobs and of jobs that ended."""
    import optuna

    from hyper_opt.registry import requeue_callback

    callback = requeue_callback(opened.storage, max_retry)
    done = []
    for trial in opened.storage.get_all_trials(opened.study_id, states=(optuna.trial.TrialState.RUNNING,)):
        message = reason(trial)
        if not message:
            continue
        trial_id = opened.storage.get_trial_id_from_study_id_trial_number(opened.study_id, trial.number)
        try:
            opened.storage.set_trial_user_attr(trial_id, "error", message)
            opened.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if callback is not None:
            callback(opened.study, opened.storage.get_trial(trial_id))
        done.append(trial.number)
    return done
