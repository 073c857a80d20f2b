#!/usr/bin/env bash
# Entrypoint of mesh-offline/rabbitmq. RabbitMQ itself reads the official image's variables
# (RABBITMQ_DEFAULT_USER, RABBITMQ_DEFAULT_PASS, RABBITMQ_DEFAULT_VHOST: the default user is
# made, an administrator, on the node's first start), so all that is left here is the official
# entrypoint's handling of flags and of a start as root.
set -euo pipefail

# `docker run IMAGE -some-flag` means the server with that flag.
if [[ "${1:-}" == -* ]]; then
    set -- rabbitmq-server "$@"
fi

# Started as root (`--user 0`): hand the data directory to rabbitmq and run as rabbitmq, as the
# official image does with gosu.
if [[ "${1:-}" == rabbitmq-server && "$(id -u)" == 0 ]]; then
    find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "${BASH_SOURCE[0]}" "$@"
fi

exec "$@"
