#!/bin/sh
# mmdebstrap customize hook ($1: the root filesystem). rabbitmq-server's postinst writes an
# Erlang cookie; one baked into the image would be the same secret in every container made from
# it. Without one the node writes a random cookie on its first start, as in the official image.
set -eu
rm -f "$1"/var/lib/rabbitmq/.erlang.cookie
