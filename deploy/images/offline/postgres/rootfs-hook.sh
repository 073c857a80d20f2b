#!/bin/sh
# mmdebstrap customize hook ($1: the root filesystem). postgresql-15's postinst makes a cluster
# "main" for the Debian service (data, configuration, log); the entrypoint makes its own in
# $PGDATA on first start, as the official image does, so the package's would be dead weight.
set -eu
rm -rf "$1"/var/lib/postgresql/* "$1"/etc/postgresql/* "$1"/var/log/postgresql/*
