#!/bin/sh
# Entrypoint of the job scheduler image: one image, two roles.
#
#   (no arguments), "scheduler [options]" or "--option ..."
#       twistd scheduler, listening on every interface of the container
#       (5050 commands, 3000 HTTP) and answering to the Host names
#       localhost and scheduler
#   "worker [options]"
#       twistd worker, dialling ws://scheduler:3000/ws/worker
#   anything else, e.g. "twistd --pidfile= -n worker ..." or "sh"
#       run exactly as given
#
# Options after the role come after the defaults below, and twistd takes the
# last of a repeated option, so they override them:
#   docker run IMAGE scheduler --allowed-hosts localhost,scheduler,jobs.example.com
#
# Tokens never go on the command line.  They come either
#   - from files: each secret file present in $SECRETS_DIR (default
#     /run/secrets, where docker compose and swarm mount secrets) adds its
#     option, e.g. /run/secrets/api_token adds
#     --api-token-file /run/secrets/api_token; or
#   - from the environment: SCHEDULER_API_TOKEN, SCHEDULER_TCP_TOKEN and
#     SCHEDULER_WORKER_TOKEN (scheduler) and WORKER_TOKEN (worker), which the
#     programs read themselves when no file option is given.
# A file wins over its variable.  Listening on every interface needs all
# three scheduler tokens (the scheduler refuses to start otherwise).
#
#   secret file      scheduler option         worker option
#   api_token        --api-token-file         -
#   tcp_token        --tcp-token-file         -
#   worker_token     --worker-token-file      --token-file
#   worker_tokens    --worker-tokens-file     -
#   db_url           SCHEDULER_DB (below)     -
#
# db_url holds a PostgreSQL URL with its password (a cluster node, --db):
# it is handed over in the variable SCHEDULER_DB, which the scheduler reads
# and then drops from its environment, rather than as --db-file, which
# insists on a file only the scheduler's user can read (compose mounts
# secrets with the host file's owner and mode).
#
# --pidfile= because a container restarts with the same pid, which a stale
# twistd.pid in /data would make twistd take for "already running".
set -eu

secrets=${SECRETS_DIR:-/run/secrets}

if [ $# -eq 0 ]; then
    set -- scheduler
fi
case $1 in
    -*) set -- scheduler "$@" ;;
esac

case $1 in
scheduler)
    shift
    # Prepended one by one, so the caller's own options stay last.
    for pair in worker_tokens:--worker-tokens-file worker_token:--worker-token-file \
        tcp_token:--tcp-token-file api_token:--api-token-file; do
        file=$secrets/${pair%%:*}
        if [ -f "$file" ]; then
            set -- "${pair#*:}" "$file" "$@"
        fi
    done
    if [ -f "$secrets/db_url" ]; then
        SCHEDULER_DB=$(cat "$secrets/db_url")
        export SCHEDULER_DB
    fi
    exec twistd --pidfile= --nodaemon scheduler \
        --tcp tcp:5050:interface=0.0.0.0 \
        --http tcp:3000:interface=0.0.0.0 \
        --allowed-hosts localhost,scheduler \
        "$@"
    ;;
worker)
    shift
    if [ -f "$secrets/worker_token" ]; then
        set -- --token-file "$secrets/worker_token" "$@"
    fi
    exec twistd --pidfile= --nodaemon worker \
        --url ws://scheduler:3000/ws/worker \
        "$@"
    ;;
*)
    exec "$@"
    ;;
esac
