#!/usr/bin/env bash
# A throw-away PostgreSQL server for the API tests.
#
#   source .ci/postgres.sh            start (or reuse) the server, export
#                                     GRIDCHARGE_TEST_DATABASE_URL, define gridcharge_pg_stop
#                                     and gridcharge_pg_cleanup (stop only if this shell started it)
#   bash .ci/postgres.sh [start]      start (or reuse) it and print
#                                     `export GRIDCHARGE_TEST_DATABASE_URL=...` (so
#                                     eval "$(bash .ci/postgres.sh)" sets it); it keeps running
#   bash .ci/postgres.sh stop         stop it and delete its data directory
#   bash .ci/postgres.sh status       exit 0 and print the URL if it is running
#
# PostgreSQL comes from Debian's packages (installed with apt-get when absent, which needs root).
# The cluster lives in a fresh temp directory owned by the `postgres` user (PostgreSQL refuses
# to run as root), listens on 127.0.0.1 only (no Unix socket) on port 54329 or the next free
# one, and lets in exactly one role, `gridcharge` (LOGIN CREATEDB, not a superuser), with trust
# auth from 127.0.0.1. fsync is off: the data is worthless by design.
#
# Environment: GRIDCHARGE_PG_PORT (first port to try, default 54329), GRIDCHARGE_PG_STATE (file
# that remembers the running cluster, default ${TMPDIR:-/tmp}/gridcharge-pg-$UID.state).
# Running it twice reuses the server the first run started.

_gridcharge_pg_state() {
    printf '%s\n' "${GRIDCHARGE_PG_STATE:-${TMPDIR:-/tmp}/gridcharge-pg-$(id -u).state}"
}

_gridcharge_pg_log() { printf 'postgres.sh: %s\n' "$*" >&2; }

# The bin directory of the newest installed PostgreSQL (empty when none is installed).
_gridcharge_pg_bindir() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] || continue
        if [[ -z "$best" ]] || [[ "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n1)" == "$d" ]]; then
            best="$d"
        fi
    done
    printf '%s\n' "$best"
}

# Run a command as the cluster owner: `postgres` when we are root, else ourselves.
_gridcharge_pg_as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

_gridcharge_pg_install() {
    [[ -n "$(_gridcharge_pg_bindir)" ]] && return 0
    if [[ "$(id -u)" -ne 0 ]]; then
        _gridcharge_pg_log "PostgreSQL is not installed; run as root or: apt-get install postgresql"
        return 1
    fi
    _gridcharge_pg_log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    [[ -n "$(_gridcharge_pg_bindir)" ]] || {
        _gridcharge_pg_log "no initdb under /usr/lib/postgresql/*/bin after installing"
        return 1
    }
}

_gridcharge_pg_port_busy() {
    # A TCP connect that succeeds means someone listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Print the URL of the server recorded in the state file if it is up; status 1 otherwise.
_gridcharge_pg_running_url() {
    local state base port bindir
    state="$(_gridcharge_pg_state)"
    [[ -f "$state" ]] || return 1
    base="$(sed -n 's/^base=//p' "$state")"
    port="$(sed -n 's/^port=//p' "$state")"
    bindir="$(sed -n 's/^bindir=//p' "$state")"
    [[ -n "$base" && -n "$port" && -x "$bindir/pg_isready" && -d "$base/data" ]] || return 1
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U gridcharge -d postgres || return 1
    printf 'postgresql+psycopg://gridcharge@127.0.0.1:%s/postgres\n' "$port"
}

# Stop the recorded server (if any) and delete its directory. Safe to call any number of times.
gridcharge_pg_stop() {
    local state base bindir
    state="$(_gridcharge_pg_state)"
    [[ -f "$state" ]] || return 0
    base="$(sed -n 's/^base=//p' "$state")"
    bindir="$(sed -n 's/^bindir=//p' "$state")"
    if [[ -n "$base" && -f "$base/data/postmaster.pid" && -x "$bindir/pg_ctl" ]]; then
        _gridcharge_pg_as_owner "$bindir/pg_ctl" -D "$base/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || _gridcharge_pg_as_owner "$bindir/pg_ctl" -D "$base/data" -m immediate -w -t 30 stop \
                >/dev/null 2>&1 || true
        _gridcharge_pg_log "stopped the server in $base"
    fi
    # Only ever delete what this script created.
    if [[ -n "$base" && "$(basename "$base")" == gridcharge-pg.* && -d "$base" ]]; then
        rm -rf -- "$base"
    fi
    rm -f -- "$state"
}

# Start a new cluster (or find the running one); sets _GRIDCHARGE_PG_RESULT to "started URL" or
# "reused URL" (progress goes to stderr). Relies on `set -euo pipefail`, so it only ever runs at
# the top level of this script run as its own process (see the bottom), never inside `||`, `if`
# or `$(...)`, where bash ignores -e. A failed start deletes what it created.
_gridcharge_pg_start() {
    local state url bindir base data port tries log
    state="$(_gridcharge_pg_state)"

    # Serialise concurrent starts on one state file.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$state.lock"
        flock -w 120 9
    fi

    if url="$(_gridcharge_pg_running_url)"; then
        _gridcharge_pg_log "reusing the running server ($url)"
        _GRIDCHARGE_PG_RESULT="reused $url"
        return 0
    fi
    gridcharge_pg_stop # a stale state file from a crashed run

    _gridcharge_pg_install
    bindir="$(_gridcharge_pg_bindir)"
    if [[ "$(id -u)" -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        _gridcharge_pg_log "no 'postgres' user to own the cluster (is the postgresql package installed?)"
        return 1
    fi

    # As root the cluster goes under /tmp: the postgres user must be able to reach it.
    if [[ "$(id -u)" -eq 0 ]]; then
        base="$(mktemp -d /tmp/gridcharge-pg.XXXXXXXX)"
    else
        base="$(mktemp -d "${TMPDIR:-/tmp}/gridcharge-pg.XXXXXXXX")"
    fi
    data="$base/data"
    log="$base/server.log"
    printf 'base=%s\nbindir=%s\nport=\n' "$base" "$bindir" >"$state"
    trap 'rc=$?; if [[ $rc -ne 0 ]]; then gridcharge_pg_stop; fi; exit $rc' EXIT
    if [[ "$(id -u)" -eq 0 ]]; then
        chown postgres:postgres "$base"
    fi

    _gridcharge_pg_as_owner "$bindir/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth=reject >"$base/initdb.log" 2>&1 || {
        cat "$base/initdb.log" >&2
        return 1
    }
    # The one role the tests use; created in single-user mode so no superuser login is ever open.
    echo "CREATE ROLE gridcharge LOGIN CREATEDB" \
        | _gridcharge_pg_as_owner "$bindir/postgres" --single -D "$data" postgres \
            >"$base/single.log" 2>&1 || {
        cat "$base/single.log" >&2
        return 1
    }
    _gridcharge_pg_as_owner sh -c "cat > '$data/pg_hba.conf'" <<'EOF'
# TYPE  DATABASE  USER        ADDRESS         METHOD
host    all       gridcharge  127.0.0.1/32    trust
EOF

    port="${GRIDCHARGE_PG_PORT:-54329}"
    tries=0
    while :; do
        tries=$((tries + 1))
        if ((tries > 50)); then
            _gridcharge_pg_log "no free port found from ${GRIDCHARGE_PG_PORT:-54329}"
            return 1
        fi
        if _gridcharge_pg_port_busy "$port"; then
            port=$((port + 1))
            continue
        fi
        _gridcharge_pg_as_owner sh -c "cat > '$data/postgresql.auto.conf'" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        sed -i "s/^port=.*/port=$port/" "$state"
        # 9>&-: the server must not inherit (and so hold) the lock.
        if _gridcharge_pg_as_owner "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 60 start \
            >/dev/null 9>&-; then
            break
        fi
        # Lost a race for the port (or a real failure: then every port fails the same way).
        tail -n 5 "$log" >&2 || true
        port=$((port + 1))
    done

    for _ in $(seq 1 60); do
        if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U gridcharge -d postgres; then
            url="postgresql+psycopg://gridcharge@127.0.0.1:$port/postgres"
            _gridcharge_pg_log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') ready: $url (data in $data)"
            _GRIDCHARGE_PG_RESULT="started $url"
            trap - EXIT
            return 0
        fi
        sleep 0.5
    done
    _gridcharge_pg_log "the server did not accept connections; its log:"
    tail -n 20 "$log" >&2 || true
    return 1
}

# Stop the server only if this shell started it (for traps around `source .ci/postgres.sh`).
gridcharge_pg_cleanup() {
    if [[ "${GRIDCHARGE_PG_STARTED:-0}" == 1 ]]; then
        gridcharge_pg_stop
    fi
}

_gridcharge_pg_source_start() {
    local out
    # A process of its own, so that `set -e` holds there whatever the caller's shell does.
    out="$(bash "$1" __start)" || return 1
    GRIDCHARGE_PG_STARTED=0
    if [[ "$out" == started\ * ]]; then
        GRIDCHARGE_PG_STARTED=1
    fi
    GRIDCHARGE_TEST_DATABASE_URL="${out#* }"
    export GRIDCHARGE_TEST_DATABASE_URL
    printf 'GRIDCHARGE_TEST_DATABASE_URL=%s\n' "$GRIDCHARGE_TEST_DATABASE_URL" >&2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-start}" in
    start)
        _gridcharge_pg_start
        printf 'export GRIDCHARGE_TEST_DATABASE_URL=%s\n' "${_GRIDCHARGE_PG_RESULT#* }"
        ;;
    __start)
        _gridcharge_pg_start
        printf '%s\n' "$_GRIDCHARGE_PG_RESULT"
        ;;
    stop) gridcharge_pg_stop ;;
    status)
        url="$(_gridcharge_pg_running_url)" || {
            echo "not running" >&2
            exit 1
        }
        printf 'GRIDCHARGE_TEST_DATABASE_URL=%s\n' "$url"
        ;;
    *)
        echo "usage: $0 [start|stop|status]   (or: source $0)" >&2
        exit 2
        ;;
    esac
else
    _gridcharge_pg_source_start "${BASH_SOURCE[0]}"
fi
