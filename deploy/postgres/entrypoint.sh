#!/bin/sh
# First start: a cluster whose superuser "scheduler" has the password in
# /run/secrets/db_password (deploy/secrets/README.md), a database
# "scheduler", and password (SCRAM) logins from the compose network.
# Every start: the server in the foreground, listening on every interface
# of the container (compose publishes no port for it).
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
password_file=${DB_PASSWORD_FILE:-/run/secrets/db_password}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ ! -s "$password_file" ]; then
        echo "postgres: $password_file is missing or empty (see deploy/secrets/README.md)" >&2
        exit 1
    fi
    "$bin/initdb" -D "$PGDATA" -U scheduler --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE scheduler;" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
    echo "postgres: created the cluster in $PGDATA and the database scheduler"
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'
