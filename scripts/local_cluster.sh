#!/usr/bin/env bash
# Local single-node Slurm cluster (with accounting) and PostgreSQL for hyper_opt tests.
#
#   scripts/local_cluster.sh up       install (if missing) and start everything; idempotent
#   scripts/local_cluster.sh down     cancel all jobs, stop everything; idempotent
#   scripts/local_cluster.sh status   show sinfo, the daemons and whether PostgreSQL answers
#   scripts/local_cluster.sh env      print `export` lines: eval "$(scripts/local_cluster.sh env)"
#   scripts/local_cluster.sh purge    down, then delete Slurm state, accounting DB and PostgreSQL data
#
# PgBouncer (transaction pooling) listens next to PostgreSQL (port PG_PORT+1), in front of the
# same database and user: HYPER_OPT_TEST_PGBOUNCER_URL in `env`. See docs/scale.md.
#
# Meant for Debian 12 (Slurm 22.05, MariaDB 10.11, PostgreSQL 15) as root without systemd.
# See docs/local_cluster.md.
set -euo pipefail

# ----------------------------------------------------------------------------- settings
STATE_DIR=/var/lib/hyper_opt
RUN_DIR=$STATE_DIR/run
LOG_DIR=/var/log/hyper_opt_cluster
SLURM_ETC=/etc/slurm
CLUSTER_NAME=hyperopt
PARTITION=debug
PG_PORT=${HYPER_OPT_PG_PORT:-55432}
PG_DATA=$STATE_DIR/pg
PG_SOCKET_DIR=/var/run/postgresql
PG_USER=hyperopt
PG_PASSWORD=hyperopt
PG_DB=hyperopt
PGB_PORT=${HYPER_OPT_PGBOUNCER_PORT:-$((PG_PORT + 1))}
PGB_DIR=$STATE_DIR/pgbouncer
MYSQL_PORT=${HYPER_OPT_MYSQL_PORT:-53306}
MYSQL_DATA=$STATE_DIR/mysql
MYSQL_RUN=$RUN_DIR/mysqld
MYSQL_SOCKET=$MYSQL_RUN/mysqld.sock
ACCT_DB=slurm_acct_db
# The node advertises more than the machine has, so that the tests' jobs, which mostly wait, run
# side by side under pytest-xdist (scripts/test.sh) instead of queueing behind each other.
NODE_CPUS=${HYPER_OPT_SLURM_CPUS:-64}
NODE_MEMORY_MB=${HYPER_OPT_SLURM_MEMORY_MB:-262144}
N_FAKE_GPUS=${HYPER_OPT_SLURM_GPUS:-16}
# GPU type of the fake GPUs: with a type, both --gres=gpu:N and --gres=gpu:TYPE:N are accepted
# (users' configs say e.g. gpu:v100:1); HYPER_OPT_SLURM_GPU_TYPE= (empty) gives untyped gpu:16.
GPU_TYPE=${HYPER_OPT_SLURM_GPU_TYPE-v100}
WAIT_TIMEOUT=${HYPER_OPT_CLUSTER_TIMEOUT:-60}
# slurm-wlm-torque: qsub/qstat/qdel that translate PBS options onto this Slurm (PBS tests)
# pgbouncer: a transaction-pooling PgBouncer in front of the PostgreSQL (docs/scale.md)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server postgresql slurm-wlm-torque pgbouncer)
HOST=$(hostname -s)

# ----------------------------------------------------------------------------- helpers
log() { printf '[local_cluster] %s\n' "$*" >&2; }
die() { printf '[local_cluster] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "'$1' must run as root (try: sudo $0 $1)"; }

# pid_of NAME PIDFILE -> prints the pid if PIDFILE names a live process called NAME
pid_of() {
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc 0-9 <"$pidfile")
    [ -n "$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ] || return 1
    alive "$pid" || return 1
    echo "$pid"
}
running() { pid_of "$1" "$2" >/dev/null; }

# alive PID: the process exists and is not a zombie (daemons are reaped by init, maybe late)
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# stop_pid NAME PIDFILE: SIGTERM the process from PIDFILE, wait, SIGKILL after 20 s
stop_pid() {
    local name=$1 pidfile=$2 pid i
    pid=$(pid_of "$name" "$pidfile") || { rm -f "$pidfile"; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "$name did not stop in 20 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.25 s
wait_for() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.25
    done
}

show_logs() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        printf '\n----- last lines of %s -----\n' "$f" >&2
        tail -n 25 "$f" >&2 || true
    done
}

# install_file DEST MODE OWNER: stdin -> DEST if content/mode/owner differ; returns 0 if changed
install_file() {
    local dest=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest" &&
        [ "$(stat -c '%a %U:%G' "$dest")" = "$mode $owner" ]; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$dest"
    rm -f "$tmp"
    return 0
}

pg_bin() {
    local d found=""
    if [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then echo /usr/lib/postgresql/15/bin; return 0; fi
    for d in /usr/lib/postgresql/*/bin; do # another version: take the last one found
        if [ -x "$d/pg_ctl" ]; then found=$d; fi
    done
    [ -n "$found" ] && echo "$found"
}

# clean_exec CMD...: run CMD from / with every file descriptor above 2 closed, so that daemons
# started by CMD hold neither our lock nor the caller's pipes (a caller reading our output
# would otherwise wait for the daemons to exit).
clean_exec() {
    (
        cd /
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec "$@"
    )
}

as_postgres() { clean_exec runuser -u postgres -- "$@"; }

lock() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    flock -w 300 9 || die "another local_cluster.sh holds $STATE_DIR/.lock"
}

# ----------------------------------------------------------------------------- packages
install_packages() {
    local missing=() p created_policy=0
    for p in "${PACKAGES[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] ||
            missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing Debian packages: ${missing[*]}"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# created by hyper_opt local_cluster.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                "${missing[@]}" >/dev/null
    } || rc=$?
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get install failed (exit $rc)"
}

# ----------------------------------------------------------------------------- directories
prepare_dirs() {
    getent passwd slurm >/dev/null || die "user slurm missing (Slurm packages not installed?)"
    mkdir -p "$STATE_DIR" "$LOG_DIR" "$SLURM_ETC" "$RUN_DIR"
    chmod 755 "$STATE_DIR"
    # slurmctld/slurmdbd (user slurm) chdir into their log directory and want it writable
    chown root:slurm "$LOG_DIR"
    chmod 775 "$LOG_DIR"
    chown slurm:slurm "$RUN_DIR"
    chmod 755 "$RUN_DIR"
    install -d -m 755 -o slurm -g slurm "$STATE_DIR/slurmctld"
    install -d -m 755 -o root -g root "$STATE_DIR/slurmd"
    install -d -m 755 -o mysql -g mysql "$MYSQL_RUN"
    local f
    for f in slurmctld.log slurmdbd.log; do
        touch "$LOG_DIR/$f"
        chown slurm:slurm "$LOG_DIR/$f"
    done
    touch "$LOG_DIR/slurmd.log" "$LOG_DIR/mariadb.log" "$LOG_DIR/postgresql.log"
    chown mysql:mysql "$LOG_DIR/mariadb.log"
    chown postgres:postgres "$LOG_DIR/postgresql.log"
}

# ----------------------------------------------------------------------------- munge
MUNGE_PID=/run/munge/munged.pid
start_munge() {
    install -d -m 700 -o munge -g munge /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating munge key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    install -d -m 755 -o munge -g munge /run/munge
    install -d -m 700 -o munge -g munge /var/lib/munge /var/log/munge
    if running munged "$MUNGE_PID"; then return 0; fi
    log "starting munged"
    clean_exec runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOG_DIR/munged.out" 2>&1 ||
        { show_logs /var/log/munge/munged.log "$LOG_DIR/munged.out"; die "munged failed to start"; }
    wait_for 10 munged bash -c 'munge -n </dev/null | unmunge' ||
        { show_logs /var/log/munge/munged.log; die "munged does not answer"; }
}

# ----------------------------------------------------------------------------- mariadb
MYSQL_PID=$MYSQL_RUN/mysqld.pid
# shellcheck disable=SC2120
mysql_root() { mariadb --no-defaults --protocol=socket --socket="$MYSQL_SOCKET" -uroot "$@"; }
start_mariadb() {
    if running mariadbd "$MYSQL_PID"; then return 0; fi
    if [ ! -d "$MYSQL_DATA/mysql" ]; then
        log "initialising MariaDB data directory $MYSQL_DATA"
        install -d -m 750 -o mysql -g mysql "$MYSQL_DATA"
        mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$LOG_DIR/mariadb-install.log" 2>&1 ||
            { show_logs "$LOG_DIR/mariadb-install.log"; die "mariadb-install-db failed"; }
    fi
    rm -f "$MYSQL_SOCKET"
    log "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
    clean_exec setsid -f /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
        --socket="$MYSQL_SOCKET" --pid-file="$MYSQL_PID" --bind-address=127.0.0.1 \
        --port="$MYSQL_PORT" --log-error="$LOG_DIR/mariadb.log" --skip-name-resolve \
        --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
        --innodb-flush-log-at-trx-commit=2 --character-set-server=utf8mb4 \
        </dev/null >>"$LOG_DIR/mariadb.log" 2>&1
    wait_for "$WAIT_TIMEOUT" MariaDB mysql_root -e 'SELECT 1' ||
        { show_logs "$LOG_DIR/mariadb.log"; die "MariaDB did not start"; }
    wait_for 10 "MariaDB pid file" running mariadbd "$MYSQL_PID" || true
    # (Re)create the accounting database and user; the password lives with the data.
    local passfile=$STATE_DIR/slurmdbd.pass pass
    if [ ! -s "$passfile" ]; then
        (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$passfile")
    fi
    pass=$(cat "$passfile")
    # shellcheck disable=SC2119
    mysql_root <<SQL
CREATE DATABASE IF NOT EXISTS $ACCT_DB;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON $ACCT_DB.* TO 'slurm'@'127.0.0.1';
GRANT ALL PRIVILEGES ON $ACCT_DB.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

# ----------------------------------------------------------------------------- slurm configs
SLURM_CONF_CHANGED=0
SLURMDBD_CONF_CHANGED=0
write_slurm_configs() {
    local i gres_lines="" pass
    # Fake GPUs: distinct character devices (copies of /dev/null), so that Slurm sets
    # CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS for --gres=gpu:N jobs.
    for ((i = 0; i < N_FAKE_GPUS; i++)); do
        if [ ! -c "/dev/fakegpu$i" ]; then
            rm -f "/dev/fakegpu$i"
            mknod -m 666 "/dev/fakegpu$i" c 1 3
        fi
        gres_lines+="Name=gpu${GPU_TYPE:+ Type=$GPU_TYPE} File=/dev/fakegpu$i"$'\n'
    done
    if install_file "$SLURM_ETC/gres.conf" 644 root:root <<EOF; then SLURM_CONF_CHANGED=1; fi
# Generated by hyper_opt scripts/local_cluster.sh -- fake GPUs for local tests.
AutoDetect=off
$gres_lines
EOF
    if install_file "$SLURM_ETC/slurm.conf" 644 root:root <<EOF; then SLURM_CONF_CHANGED=1; fi
# Generated by hyper_opt scripts/local_cluster.sh -- single-node test cluster.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
InactiveLimit=0
KillWait=5
MinJobAge=60
Waittime=0
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEMORY_MB Gres=gpu:${GPU_TYPE:+$GPU_TYPE:}$N_FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    pass=$(cat "$STATE_DIR/slurmdbd.pass")
    if install_file "$SLURM_ETC/slurmdbd.conf" 600 slurm:slurm <<EOF; then SLURMDBD_CONF_CHANGED=1; fi
# Generated by hyper_opt scripts/local_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=$ACCT_DB
EOF
}

# ----------------------------------------------------------------------------- slurm daemons
# slurmd 22.05 initialises its cgroup plugin even with proctrack/linuxproc + task/none and
# refuses to start without a cgroup filesystem on /sys/fs/cgroup (e.g. in a bare chroot).
ensure_cgroup_fs() {
    mountpoint -q /sys/fs/cgroup 2>/dev/null && return 0
    log "no cgroup filesystem on /sys/fs/cgroup (slurmd needs one); mounting one"
    mkdir -p /sys/fs/cgroup 2>/dev/null || true
    if [ "$(cat /proc/self/cgroup 2>/dev/null)" = "0::/" ] || ! grep -q '^[^#]' /proc/cgroups 2>/dev/null; then
        mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null && return 0
    else # cgroup v1 host: a tmpfs with one mount per v1 hierarchy (as /proc/self/cgroup lists them)
        local id ctrl rest
        if mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup 2>/dev/null; then
            while IFS=: read -r id ctrl rest; do
                [ "$id" != 0 ] && [ -n "$ctrl" ] || continue
                if [[ $ctrl == name=* ]]; then
                    mkdir -p "/sys/fs/cgroup/${ctrl#name=}"
                    mount -t cgroup -o "none,$ctrl" cgroup "/sys/fs/cgroup/${ctrl#name=}" 2>/dev/null || true
                else
                    mkdir -p "/sys/fs/cgroup/$ctrl"
                    mount -t cgroup -o "$ctrl" cgroup "/sys/fs/cgroup/$ctrl" 2>/dev/null || true
                fi
            done </proc/self/cgroup
            return 0
        fi
    fi
    log "warning: could not mount a cgroup filesystem on /sys/fs/cgroup; slurmd may not start"
}

SLURMDBD_PID=$RUN_DIR/slurmdbd.pid
SLURMCTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid

start_slurmdbd() {
    if ((SLURMDBD_CONF_CHANGED)) && running slurmdbd "$SLURMDBD_PID"; then
        log "slurmdbd.conf changed; restarting slurmdbd"
        stop_pid slurmdbd "$SLURMDBD_PID"
    fi
    if running slurmdbd "$SLURMDBD_PID"; then return 0; fi
    log "starting slurmdbd"
    clean_exec /usr/sbin/slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.out" 2>&1 ||
        { show_logs "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmdbd.out"; die "slurmdbd failed to start"; }
    wait_for "$WAIT_TIMEOUT" slurmdbd sacctmgr -n -P show cluster ||
        { show_logs "$LOG_DIR/slurmdbd.log" "$LOG_DIR/mariadb.log"; die "slurmdbd does not answer"; }
}

# Cluster, account root and user root must exist in accounting (sacct, and so submitit, rely on it).
ensure_accounting() {
    # fast path (one query): the root association exists, so do the cluster and the account
    if [ -n "$(sacctmgr -n -P show assoc cluster="$CLUSTER_NAME" user=root format=user 2>/dev/null)" ]; then
        return 0
    fi
    if [ -z "$(sacctmgr -n -P show cluster "$CLUSTER_NAME" format=cluster 2>/dev/null)" ]; then
        log "registering cluster $CLUSTER_NAME in accounting"
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    fi
    if [ -z "$(sacctmgr -n -P show account root format=account 2>/dev/null)" ]; then
        sacctmgr -i add account root Cluster="$CLUSTER_NAME" Description=root Organization=root >/dev/null
    fi
    if [ -z "$(sacctmgr -n -P show assoc cluster="$CLUSTER_NAME" user=root format=user 2>/dev/null)" ]; then
        log "adding user root to accounting"
        sacctmgr -i add user root Account=root Cluster="$CLUSTER_NAME" AdminLevel=Administrator >/dev/null
    fi
}

node_state() { sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -n1; }

start_slurmctld_slurmd() {
    if ((SLURM_CONF_CHANGED)); then
        if running slurmd "$SLURMD_PID" || running slurmctld "$SLURMCTLD_PID"; then
            log "slurm.conf/gres.conf changed; restarting slurmctld and slurmd"
        fi
        stop_pid slurmd "$SLURMD_PID"
        stop_pid slurmctld "$SLURMCTLD_PID"
    fi
    if ! running slurmctld "$SLURMCTLD_PID"; then
        log "starting slurmctld"
        clean_exec /usr/sbin/slurmctld -i </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 ||
            { show_logs "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.out"; die "slurmctld failed to start"; }
    fi
    wait_for "$WAIT_TIMEOUT" slurmctld bash -c 'scontrol ping | grep -q UP' ||
        { show_logs "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.out"; die "slurmctld does not answer"; }
    if ! running slurmd "$SLURMD_PID"; then
        ensure_cgroup_fs
        log "starting slurmd"
        clean_exec /usr/sbin/slurmd </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 ||
            { show_logs "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmd.out"; die "slurmd failed to start"; }
    fi
    # Wait for the node to be usable; resume it if it is drained/down (e.g. after a crash).
    local deadline=$((SECONDS + WAIT_TIMEOUT)) state last_resume=-100
    while :; do
        state=$(node_state)
        case "$state" in
        idle | mix | alloc | comp) break ;;
        drain | drng | down | fail | failg | boot) # registered but unusable: resume
            if ((SECONDS - last_resume >= 3)); then
                log "node $HOST is '$state'; resuming it"
                scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
                last_resume=$SECONDS
            fi
            ;;
        esac
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            scontrol show node "$HOST" >&2 || true
            show_logs "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmdbd.log"
            die "node $HOST not idle after ${WAIT_TIMEOUT}s (state: '${state:-unknown}')"
        fi
        sleep 0.25
    done
}

# ----------------------------------------------------------------------------- postgresql
pg_running() { as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }
pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -U postgres; }
psql_admin() { as_postgres psql -X -q -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }

start_postgres() {
    PGBIN=$(pg_bin) || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    install -d -m 2775 -o postgres -g postgres "$PG_SOCKET_DIR"
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
        log "initialising PostgreSQL data directory $PG_DATA"
        rm -rf "$PG_DATA"
        install -d -m 700 -o postgres -g postgres "$PG_DATA"
        as_postgres "$PGBIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 >>"$LOG_DIR/postgresql-initdb.log" 2>&1 ||
            { show_logs "$LOG_DIR/postgresql-initdb.log"; die "initdb failed"; }
        echo "include_if_exists = 'hyper_opt.conf'" >>"$PG_DATA/postgresql.conf"
    fi
    local changed=0
    if install_file "$PG_DATA/hyper_opt.conf" 600 postgres:postgres <<EOF; then changed=1; fi
# Generated by hyper_opt scripts/local_cluster.sh (the port is given on the command line)
listen_addresses = '127.0.0.1'
max_connections = 300
unix_socket_directories = '$PG_SOCKET_DIR'
password_encryption = 'scram-sha-256'
synchronous_commit = off
EOF
    if pg_running && { ((changed)) || ! pg_ready; }; then
        log "restarting PostgreSQL (settings or port changed)"
        as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
    fi
    if ! pg_running; then
        log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$LOG_DIR/postgresql.log" \
            -o "-p $PG_PORT" -w -t "$WAIT_TIMEOUT" start >/dev/null ||
            { show_logs "$LOG_DIR/postgresql.log"; die "PostgreSQL did not start"; }
    fi
    wait_for "$WAIT_TIMEOUT" PostgreSQL pg_ready ||
        { show_logs "$LOG_DIR/postgresql.log"; die "PostgreSQL does not answer on port $PG_PORT"; }
    if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != 1 ]; then
        log "creating PostgreSQL role $PG_USER"
        psql_admin -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
    fi
    if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        log "creating PostgreSQL database $PG_DB"
        psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
    fi
}

stop_postgres() {
    PGBIN=$(pg_bin) || return 0
    [ -d "$PG_DATA" ] || return 0
    if pg_running; then
        log "stopping PostgreSQL"
        as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null ||
            as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null || true
    fi
}

# ----------------------------------------------------------------------------- pgbouncer
# Transaction pooling: a server connection is lent to a client for one transaction only, so
# thousands of workers share a few dozen PostgreSQL connections. Clients authenticate with
# SCRAM against the user's own SCRAM secret (copied from pg_authid: no password in clear), and
# PgBouncer logs in to PostgreSQL with the client's proof (SCRAM pass-through, PgBouncer 1.14+).
PGB_PID=$PGB_DIR/pgbouncer.pid
pgb_ready() {
    PGCONNECT_TIMEOUT=3 PGPASSWORD=$PG_PASSWORD psql -X -qtA -h 127.0.0.1 -p "$PGB_PORT" -U "$PG_USER" \
        -d "$PG_DB" -c 'SELECT 1' 2>/dev/null | grep -qx 1
}

start_pgbouncer() {
    local bin=/usr/sbin/pgbouncer secret changed=0
    [ -x "$bin" ] || { log "pgbouncer not installed; skipping it"; return 0; }
    install -d -m 750 -o postgres -g postgres "$PGB_DIR"
    touch "$LOG_DIR/pgbouncer.log"
    chown postgres:postgres "$LOG_DIR/pgbouncer.log"
    secret=$(psql_admin -tAc "SELECT rolpassword FROM pg_authid WHERE rolname = '$PG_USER'")
    [[ $secret == SCRAM-SHA-256* ]] || die "no SCRAM secret for PostgreSQL role $PG_USER"
    if printf '"%s" "%s"\n' "$PG_USER" "$secret" | install_file "$PGB_DIR/userlist.txt" 600 postgres:postgres; then
        changed=1
    fi
    if install_file "$PGB_DIR/pgbouncer.ini" 640 postgres:postgres <<EOF; then changed=1; fi
; Generated by hyper_opt scripts/local_cluster.sh -- transaction pooling for hyper_opt (docs/scale.md)
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
pool_mode = transaction
; clients (workers) accepted, and server connections per database/user pair and per database
max_client_conn = 5000
listen_backlog = 4096
default_pool_size = 20
reserve_pool_size = 5
max_db_connections = 40
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
stats_users = $PG_USER
server_idle_timeout = 60
logfile = $LOG_DIR/pgbouncer.log
pidfile = $PGB_PID
log_connections = 0
log_disconnections = 0
EOF
    if running pgbouncer "$PGB_PID"; then
        if ((changed)); then
            log "pgbouncer settings changed; reloading them"
            kill -HUP "$(pid_of pgbouncer "$PGB_PID")"
        fi
    else
        log "starting pgbouncer (transaction pooling) on 127.0.0.1:$PGB_PORT"
        # the open-file limit bounds max_client_conn
        clean_exec runuser -u postgres -- bash -c "ulimit -n 16384 2>/dev/null || true; exec $bin -d -q $PGB_DIR/pgbouncer.ini" \
            </dev/null >>"$LOG_DIR/pgbouncer.log" 2>&1 ||
            { show_logs "$LOG_DIR/pgbouncer.log"; die "pgbouncer failed to start"; }
    fi
    wait_for "$WAIT_TIMEOUT" pgbouncer pgb_ready ||
        { show_logs "$LOG_DIR/pgbouncer.log"; die "pgbouncer does not answer on port $PGB_PORT"; }
}

stop_pgbouncer() { stop_pid pgbouncer "$PGB_PID"; }

# ----------------------------------------------------------------------------- openpbs
# PBS Pro's open-source edition (OpenPBS), built from ../shared/vendor/ (no registry packages it),
# beside Slurm: server, scheduler, MoM and comm on loopback, its own datastore on port 15007.
# Skipped with one line when the vendor sources are absent (a clone elsewhere). docs/local_cluster.md
PBS_PREFIX=/opt/pbs
PBS_EXEC=$PBS_PREFIX/bin
PBS_HOME_DIR=/var/spool/pbs
PBS_VENDOR_DIR=${HYPER_OPT_PBS_VENDOR:-$(cd "$(dirname "$0")/.." && pwd)/../shared/vendor}
PBS_BUILD_DIR=$STATE_DIR/openpbs-build
PBS_QUEUE=workq
# The node has more GPUs and CPUs than one job may take, so that the tests' jobs run side by side
# under pytest-xdist (several projects' selects take ncpus=64 each); a job may take at most
# PBS_MAX_NGPUS GPUs (the queue's resources_max: more is refused by qsub itself).
PBS_NGPUS=16
PBS_MAX_NGPUS=4
PBS_NCPUS=256
PBS_MEM=1tb
# seconds between a job's SIGTERM and SIGKILL at its walltime or qdel (PBS Pro's default is 10)
PBS_KILL_DELAY=${HYPER_OPT_PBS_KILL_DELAY:-5}
PBS_PACKAGES=(gcc make libtool libhwloc-dev libx11-dev libxt-dev libedit-dev libical-dev
    libncurses-dev perl postgresql-server-dev-all postgresql-contrib python3-dev tcl-dev tk-dev swig
    libexpat-dev libssl-dev libxext-dev libxft-dev autoconf automake g++ libcjson-dev sendmail-bin
    sudo expat libedit2 tcl tk)

pbs_tarball() { compgen -G "$PBS_VENDOR_DIR/openpbs-*.tar.gz" | head -n1; }
pbs_installed() { [ -x "$PBS_EXEC/qsub" ] && [ -x "$PBS_PREFIX/sbin/pbs_server.bin" ]; }
pbs_qmgr() { "$PBS_EXEC/qmgr" -c "$1"; }
pbs_server_up() { "$PBS_EXEC/qstat" -Bf >/dev/null 2>&1; }

# Build and install into /opt/pbs from the vendored tarball and its loopback patch (~3 min on 2 cores).
pbs_build() {
    local tarball src
    pbs_installed && return 0
    tarball=$(pbs_tarball) || die "no openpbs-*.tar.gz in $PBS_VENDOR_DIR"
    local PACKAGES=("${PBS_PACKAGES[@]}") # install_packages reads PACKAGES (bash scoping is dynamic)
    install_packages
    log "building OpenPBS from $tarball (a few minutes; log $LOG_DIR/openpbs-build.log)"
    rm -rf "$PBS_BUILD_DIR"
    mkdir -p "$PBS_BUILD_DIR"
    tar -xzf "$tarball" -C "$PBS_BUILD_DIR"
    src=$(compgen -G "$PBS_BUILD_DIR/openpbs-*" | head -n1)
    (
        cd "$src"
        patch -p1 <"$PBS_VENDOR_DIR/openpbs-loopback.patch"
        ./autogen.sh
        PYTHON=/usr/bin/python3 ./configure --prefix="$PBS_PREFIX"
        make -j"$(nproc)"
        make install
    ) >"$LOG_DIR/openpbs-build.log" 2>&1 ||
        { show_logs "$LOG_DIR/openpbs-build.log"; die "OpenPBS build failed"; }
    "$PBS_PREFIX/libexec/pbs_postinstall" >>"$LOG_DIR/openpbs-build.log" 2>&1 ||
        { show_logs "$LOG_DIR/openpbs-build.log"; die "pbs_postinstall failed"; }
    rm -rf "$PBS_BUILD_DIR"
}

# /etc/pbs.conf: one host, everything on loopback under the name localhost
pbs_write_conf() {
    local key val
    [ -f /etc/pbs.conf ] || die "/etc/pbs.conf missing after pbs_postinstall"
    for key in PBS_SERVER=localhost PBS_START_SERVER=1 PBS_START_SCHED=1 PBS_START_COMM=1 \
        PBS_START_MOM=1 PBS_MOM_NODE_NAME=localhost PBS_LEAF_NAME=localhost; do
        val=${key#*=}
        key=${key%%=*}
        if grep -q "^$key=" /etc/pbs.conf; then
            sed -i "s|^$key=.*|$key=$val|" /etc/pbs.conf
        else
            echo "$key=$val" >>/etc/pbs.conf
        fi
    done
    chmod 4755 "$PBS_PREFIX/sbin/pbs_iff" "$PBS_PREFIX/sbin/pbs_rcp"
}

# MoM samples its jobs (and so enforces walltime) every 10-120 s by default: every 1-2 s here,
# so that a walltime test ends when its walltime does. Job output is copied with cp (one host).
pbs_write_mom_config() {
    install -d -m 755 "$PBS_HOME_DIR/mom_priv"
    if install_file "$PBS_HOME_DIR/mom_priv/config" 644 root:root <<EOF; then
\$clienthost localhost
\$usecp *:/ /
\$min_check_poll 1
\$max_check_poll 2
EOF
        local pid
        pid=$(tr -dc 0-9 <"$PBS_HOME_DIR/mom_priv/mom.lock" 2>/dev/null || true)
        if [ -n "$pid" ] && alive "$pid"; then kill -HUP "$pid"; fi
    fi
}

# init.d's first start runs pbs_habitat, which creates PBS_HOME and the server's datastore; a
# server that then is not up (seen once: it exited right after reading its new datastore) is
# started once with `-t create` (a new, empty configuration, which pbs_configure_server fills).
pbs_start_daemons() {
    pbs_write_mom_config
    if pbs_server_up; then return 0; fi
    log "starting OpenPBS (comm, MoM, scheduler, server; the first start creates its datastore)"
    clean_exec /etc/init.d/pbs start </dev/null >>"$LOG_DIR/openpbs-start.log" 2>&1 ||
        { show_logs "$LOG_DIR/openpbs-start.log"; die "OpenPBS failed to start"; }
    if ! wait_for 20 "OpenPBS server" pbs_server_up && [ ! -e "$PBS_HOME_DIR/server_priv/.hyper_opt_started" ]; then
        log "OpenPBS server not up after its first start; starting it with -t create"
        clean_exec bash -c ". $PBS_PREFIX/libexec/pbs_db_env; echo y | $PBS_PREFIX/sbin/pbs_server -t create" \
            </dev/null >>"$LOG_DIR/openpbs-start.log" 2>&1 || true
    fi
    wait_for "$WAIT_TIMEOUT" "OpenPBS server" pbs_server_up ||
        { show_logs "$LOG_DIR/openpbs-start.log"; die "OpenPBS server does not answer"; }
    touch "$PBS_HOME_DIR/server_priv/.hyper_opt_started"
}

# Node, GPUs, queue, history; idempotent (qmgr `set` of an equal value is a no-op).
pbs_configure_server() {
    "$PBS_EXEC/pbsnodes" localhost >/dev/null 2>&1 || pbs_qmgr "create node localhost"
    pbs_qmgr "list resource ngpus" >/dev/null 2>&1 || pbs_qmgr "create resource ngpus type=long, flag=nh"
    # NCAR's site resources, so that the research projects' own sections are accepted unchanged:
    # gpu_type job-wide (its own -l line), cpu_type in a select chunk (neither is scheduled on)
    pbs_qmgr "list resource gpu_type" >/dev/null 2>&1 || pbs_qmgr "create resource gpu_type type=string"
    pbs_qmgr "list resource cpu_type" >/dev/null 2>&1 || pbs_qmgr "create resource cpu_type type=string, flag=h"
    # like the Slurm node: more CPUs and memory than the machine has, so that the projects' selects
    # (ncpus=64, mem=384GB) fit and several jobs run at once
    pbs_qmgr "set node localhost resources_available.ngpus=$PBS_NGPUS, resources_available.ncpus=$PBS_NCPUS"
    pbs_qmgr "set node localhost resources_available.mem=$PBS_MEM, resources_available.cpu_type=milan"
    pbs_qmgr "list queue $PBS_QUEUE" >/dev/null 2>&1 ||
        pbs_qmgr "create queue $PBS_QUEUE queue_type=execution"
    pbs_qmgr "set queue $PBS_QUEUE enabled=true, started=true, kill_delay=$PBS_KILL_DELAY"
    # a select for more GPUs than a job may have is refused by qsub itself (not queued forever)
    pbs_qmgr "set queue $PBS_QUEUE resources_max.ngpus=$PBS_MAX_NGPUS"
    pbs_qmgr "set server default_queue=$PBS_QUEUE"
    pbs_qmgr "set server job_history_enable=true"
    pbs_qmgr "set server acl_roots=root"
    pbs_qmgr "set server scheduling=true, scheduler_iteration=5"
    # the scheduler hands out ngpus only when it schedules on it: then exec_vnode shows the job's
    # GPUs and a job waits while the node's 4 are taken
    local sched_config=$PBS_HOME_DIR/sched_priv/sched_config pid
    if ! grep -q '^resources:.*ngpus' "$sched_config"; then
        sed -i 's/^resources: "\(.*\)"/resources: "\1, ngpus"/' "$sched_config"
        pid=$(tr -dc 0-9 <"$PBS_HOME_DIR/sched_priv/sched.lock" 2>/dev/null || true)
        if [ -n "$pid" ] && alive "$pid"; then kill -HUP "$pid"; fi
    fi
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    until "$PBS_EXEC/pbsnodes" localhost 2>/dev/null | grep -Eq 'state = (free|job-busy|job-exclusive)'; do
        ((SECONDS < deadline)) || { "$PBS_EXEC/pbsnodes" localhost >&2 || true; die "OpenPBS node localhost is not up"; }
        sleep 0.5
    done
}

pbs_up() {
    if [ -z "$(pbs_tarball)" ] && ! pbs_installed; then
        log "OpenPBS: no sources in $PBS_VENDOR_DIR and none installed in $PBS_PREFIX; PBS Pro tests will skip"
        return 0
    fi
    pbs_build
    pbs_write_conf
    pbs_start_daemons
    pbs_configure_server
}

pbs_down() {
    pbs_installed || return 0
    if pbs_server_up; then
        local ids
        ids=$("$PBS_EXEC/qselect" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || "$PBS_EXEC/qdel" -W force $ids 2>/dev/null || true
    fi
    log "stopping OpenPBS"
    clean_exec /etc/init.d/pbs stop </dev/null >>"$LOG_DIR/openpbs-start.log" 2>&1 || true
}

pbs_status() {
    echo "OpenPBS ($PBS_PREFIX):"
    if ! pbs_installed; then echo "  not installed"; return 0; fi
    if pbs_server_up; then "$PBS_EXEC/pbsnodes" -aSj 2>/dev/null | sed 's/^/  /'; else echo "  server not answering"; fi
}

pbs_env() {
    pbs_installed || return 0
    printf 'export HYPER_OPT_TEST_PBS_QSUB=%q\n' "$PBS_EXEC/qsub"
}

# ----------------------------------------------------------------------------- commands
cmd_up() {
    need_root up
    local t0=$SECONDS
    install_packages
    lock
    prepare_dirs
    start_munge
    start_mariadb
    write_slurm_configs
    start_slurmdbd
    ensure_accounting
    start_slurmctld_slurmd
    start_postgres
    start_pgbouncer
    pbs_up
    log "up: Slurm node $HOST ($(node_state)), partition $PARTITION, PostgreSQL on 127.0.0.1:$PG_PORT, PgBouncer on 127.0.0.1:$PGB_PORT ($((SECONDS - t0))s)"
}

cmd_down() {
    need_root down
    lock
    if running slurmctld "$SLURMCTLD_PID"; then
        local ids
        ids=$(squeue -h -o '%A' 2>/dev/null || true)
        if [ -n "$ids" ]; then
            log "cancelling jobs: ${ids//$'\n'/ }"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            # shellcheck disable=SC2016
            wait_for 30 "jobs to end" bash -c '[ -z "$(squeue -h -t running,completing -o %A)" ]' || true
        fi
    fi
    stop_pid slurmd "$SLURMD_PID"
    stop_pid slurmctld "$SLURMCTLD_PID"
    stop_pid slurmdbd "$SLURMDBD_PID"
    stop_pid mariadbd "$MYSQL_PID"
    stop_pid munged "$MUNGE_PID"
    pbs_down
    stop_pgbouncer
    stop_postgres
    log "down"
}

cmd_purge() {
    need_root purge
    cmd_down
    log "deleting Slurm state, accounting database and PostgreSQL data under $STATE_DIR"
    rm -rf "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$MYSQL_DATA" "$PG_DATA" "$PGB_DIR" \
        "$STATE_DIR/slurmdbd.pass" "$RUN_DIR"
}

daemon_line() {
    local name=$1 pidfile=$2 pid
    if pid=$(pid_of "$name" "$pidfile"); then
        printf '  %-10s running (pid %s)\n' "$name" "$pid"
    else
        printf '  %-10s stopped\n' "$name"
    fi
}

cmd_status() {
    local rc=0
    echo "Slurm (cluster $CLUSTER_NAME, node $HOST):"
    if command -v sinfo >/dev/null && sinfo 2>/dev/null; then :; else echo "  sinfo: no answer"; rc=1; fi
    echo "Daemons:"
    daemon_line munged "$MUNGE_PID"
    daemon_line mariadbd "$MYSQL_PID"
    daemon_line slurmdbd "$SLURMDBD_PID"
    daemon_line slurmctld "$SLURMCTLD_PID"
    daemon_line slurmd "$SLURMD_PID"
    echo "PostgreSQL (127.0.0.1:$PG_PORT):"
    if command -v pg_isready >/dev/null && pg_isready -h 127.0.0.1 -p "$PG_PORT"; then :; else
        echo "  not answering"
        rc=1
    fi
    echo "PgBouncer (127.0.0.1:$PGB_PORT, transaction pooling):"
    if pgb_ready; then echo "  accepting connections"; else echo "  not answering"; fi
    pbs_status
    echo "Logs: $LOG_DIR"
    return $rc
}

cmd_env() {
    printf 'export HYPER_OPT_TEST_PG_URL=%q\n' "postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
    printf 'export HYPER_OPT_TEST_PGBOUNCER_URL=%q\n' "postgresql://$PG_USER@127.0.0.1:$PGB_PORT/$PG_DB"
    printf 'export PGPASSWORD=%q\n' "$PG_PASSWORD"
    pbs_env
}

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
purge) cmd_purge ;;
pg-stop) need_root pg-stop; stop_postgres ;;   # fault injection: the database goes away
pg-start) need_root pg-start; start_postgres ;;
pbs-up) need_root pbs-up; lock; mkdir -p "$LOG_DIR"; pbs_up ;;     # OpenPBS only (Slurm untouched)
pbs-down) need_root pbs-down; lock; pbs_down ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
