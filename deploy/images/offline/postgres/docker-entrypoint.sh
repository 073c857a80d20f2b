#!/usr/bin/env bash
# Entrypoint of mesh-offline/postgres: the part of the official postgres image's interface that
# the mesh uses (compose.yaml, deploy/k8s/overlays/dev/postgresql.yaml).
#
#   POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE)  the superuser's password; required on first
#       start unless POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER (default postgres), POSTGRES_DB (default: the user), POSTGRES_INITDB_ARGS,
#   POSTGRES_HOST_AUTH_METHOD (default: password_encryption, scram-sha-256), PGDATA
#
# On an empty PGDATA: initdb, then /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh in name
# order (a *.sh is executed if executable, sourced otherwise) against a server reachable only
# through a private socket (PGHOST points at it), so that a health check sees the database only
# once it is complete. Then, and on every later start, `exec postgres` in the foreground.
#
# No -u: init scripts are sourced into this shell, and they may rely on unset variables.
set -Eeo pipefail

INIT_DIR=/docker-entrypoint-initdb.d
SOCKET_DIR=/var/run/postgresql

# VAR or VAR_FILE (Docker and Kubernetes secrets), exported for the init scripts.
file_env() {
    local var="$1" default="${2:-}" file_var="${1}_FILE"
    if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
        echo "error: both $var and $file_var are set; set one" >&2
        exit 1
    fi
    local value="$default"
    if [[ -n "${!var:-}" ]]; then
        value="${!var}"
    elif [[ -n "${!file_var:-}" ]]; then
        value="$(<"${!file_var}")"
    fi
    export "$var"="$value"
    unset "$file_var"
}

# Arguments that make postgres print something and exit: no initialisation for those.
wants_help() {
    local arg
    for arg; do
        case "$arg" in
            -'?' | --help | --describe-config | -V | --version) return 0 ;;
        esac
    done
    return 1
}

# Started as root (`--user 0`): hand PGDATA and the socket directory to postgres, then run this
# script again as postgres, as the official image does with gosu.
drop_root() {
    mkdir -p "$PGDATA" "$SOCKET_DIR"
    find "$PGDATA" "$SOCKET_DIR" \! -user postgres -exec chown postgres:postgres '{}' +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
}

create_directories() {
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" || :  # initdb and postgres insist on it; a mounted volume may refuse
    mkdir -p "$SOCKET_DIR" || :
}

check_first_start_env() {
    if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
        cat >&2 <<'EOF'
error: the database is not initialised and no superuser password is given.
       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust
       to allow every connection without a password (not recommended).
EOF
        exit 1
    fi
    # initdb names the cluster's owner after the current user: it must have a passwd entry.
    if ! getent passwd "$(id -u)" >/dev/null; then
        echo "error: uid $(id -u) has no passwd entry; run as $(id -u postgres) (postgres)" >&2
        exit 1
    fi
}

# POSTGRES_INITDB_ARGS is split into words, as the official image does.
# shellcheck disable=SC2086
init_database_dir() {
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        # The password never reaches a file or the command line.
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
            $POSTGRES_INITDB_ARGS
    else
        initdb --username="$POSTGRES_USER" $POSTGRES_INITDB_ARGS
    fi
}

# Local (socket) connections keep initdb's trust; every TCP client needs the password.
allow_remote_hosts() {
    local method="$POSTGRES_HOST_AUTH_METHOD"
    if [[ -z "$method" ]]; then
        method="$(postgres -C password_encryption)"
    fi
    printf '\nhost all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"
}

temp_server_start() {
    INIT_SOCKET_DIR="$(mktemp -d "$SOCKET_DIR/init.XXXXXX")"
    export PGHOST="$INIT_SOCKET_DIR" PGPORT=5432
    # The init scripts' psql needs the password only if POSTGRES_INITDB_ARGS made local
    # connections ask for one; it is harmless otherwise.
    export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
    pg_ctl -D "$PGDATA" -w start \
        -o "-c listen_addresses='' -c unix_socket_directories='$INIT_SOCKET_DIR' -p 5432"
}

temp_server_stop() {
    pg_ctl -D "$PGDATA" -m fast -w stop
    rm -rf "$INIT_SOCKET_DIR"
    unset PGHOST PGPORT PGPASSWORD INIT_SOCKET_DIR
}

run_sql() {
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

create_database() {
    local exists
    exists="$(run_sql --dbname postgres --tuples-only --set db="$POSTGRES_DB" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
    if [[ -z "${exists//[[:space:]]/}" ]]; then
        run_sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
}

run_init_files() {
    local f
    for f in "$INIT_DIR"/*; do
        [[ -e "$f" ]] || continue
        case "$f" in
            *.sh)
                if [[ -x "$f" ]]; then
                    echo "$0: running $f"
                    "$f"
                else
                    echo "$0: sourcing $f"
                    # shellcheck disable=SC1090
                    . "$f"
                fi
                ;;
            *.sql) echo "$0: running $f"; run_sql --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | run_sql --dbname "$POSTGRES_DB" ;;
            *) echo "$0: ignoring $f" ;;
        esac
    done
}

initialise() {
    check_first_start_env
    ls "$INIT_DIR"/ >/dev/null  # an unreadable init directory fails now, not half-way
    init_database_dir
    allow_remote_hosts
    temp_server_start
    create_database
    run_init_files
    temp_server_stop
    echo "PostgreSQL init process complete; ready for start up."
}

main() {
    if [[ "${1:0:1}" == - ]]; then
        set -- postgres "$@"
    fi
    if [[ "$1" == postgres ]] && ! wants_help "$@"; then
        : "${PGDATA:=/var/lib/postgresql/data}"
        export PGDATA
        file_env POSTGRES_PASSWORD
        file_env POSTGRES_USER postgres
        file_env POSTGRES_DB "$POSTGRES_USER"
        file_env POSTGRES_INITDB_ARGS
        : "${POSTGRES_HOST_AUTH_METHOD:=}"
        if [[ "$(id -u)" == 0 ]]; then
            drop_root "$@"
        fi
        create_directories
        if [[ -s "$PGDATA/PG_VERSION" ]]; then
            echo "PostgreSQL database directory $PGDATA holds a database; skipping initialisation"
        else
            initialise
        fi
    fi
    exec "$@"
}

main "$@"
