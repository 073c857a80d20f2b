#!/usr/bin/env bash
# Entrypoint of mesh-offline/redis: the official redis image's behaviour for `redis-server`.
set -euo pipefail

# `docker run IMAGE --port 7000` and `docker run IMAGE /path/redis.conf` mean the server.
if [[ "${1:-}" == -* || "${1:-}" == *.conf ]]; then
    set -- redis-server "$@"
fi

# Does the command line (or the config file that comes first) already decide protected mode?
sets_protected_mode() {
    local arg
    for arg; do
        [[ "$arg" == --protected-mode ]] && return 0
    done
    [[ "${2:-}" == *.conf && -r "$2" ]] && grep -Eqi '^[[:space:]]*protected-mode[[:space:]]' "$2"
}

if [[ "${1:-}" == redis-server ]]; then
    # Started as root (`--user 0`): hand the working directory to redis and run as redis, as
    # the official image does with gosu.
    if [[ "$(id -u)" == 0 ]]; then
        find . \! -user redis -exec chown redis:redis '{}' +
        exec setpriv --reuid=redis --regid=redis --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    # The official image is compiled with protected mode off, so that other containers reach a
    # server without a password; Debian's keeps it on (the default `bind * -::*` would then
    # refuse every non-loopback client). Say it on the command line, before the caller's options
    # so that theirs still win, unless they or their config file decide.
    if ! sets_protected_mode "$@"; then
        if [[ "${2:-}" == *.conf ]]; then
            set -- "$1" "$2" --protected-mode no "${@:3}"
        else
            set -- "$1" --protected-mode no "${@:2}"
        fi
    fi
    # Files the server writes (dumps, append-only files) are its own, as in the official image.
    if [[ "$(umask)" == 0022 ]]; then
        umask 0077
    fi
fi

exec "$@"
