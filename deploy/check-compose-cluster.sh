#!/bin/bash
# docker-compose.yml's "cluster" profile, for real with podman-compose:
# PostgreSQL built from deploy/postgres, two scheduler nodes sharing it,
# and a worker that knows both.  Both nodes healthy, one leads, a job asked
# of either runs, a task added on one fires from the leader; then the node
# the worker is on stops, and the worker and the jobs carry on with the
# other.  Clean logs, then `down -v`.
#
# Run by `make container-check` after the shared checks (it needs their
# podman set-up and the stand-in base image); from a clone of the
# committed project, as they do.
set -uo pipefail
TOOLS=${CONTAINER_TOOLS:-../shared/tools/containers}
. "$TOOLS/env.sh"
PROJECT=jobscluster
SRC=$(mktemp -d)
PC=("$PODMAN_COMPOSE" -p "$PROJECT" --profile cluster)
SERVICES=(postgres node-1 node-2 cluster-worker)

for p in 3001 3002 5051 5052; do
    if ss -ltn | grep -q ":$p "; then echo "port $p is in use; the cluster profile needs it"; exit 2; fi
done
down() { (cd "$SRC" && "${PC[@]}" down -v >> "$WORK/cluster-down.log" 2>&1); rm -rf "$SRC"; }
trap down EXIT

git clone -q "$(git -C "${PROJECT_DIR:-.}" rev-parse --show-toplevel)" "$SRC"
cd "$SRC" || exit 2
# The secrets, as deploy/secrets/README.md says.
( cd deploy/secrets && chmod 700 . && for t in api_token tcp_token worker_token; do
      (umask 022; openssl rand -hex 32 > "$t"); done
  pw=$(openssl rand -hex 24)
  (umask 022; echo "$pw" > db_password; echo "postgresql://scheduler:$pw@postgres/scheduler" > db_url) )
API=$(cat deploy/secrets/api_token)
auth=(-H "Authorization: Bearer $API")
get() { curl -sS "${auth[@]}" "localhost:$1$2"; }

echo "== podman-compose --profile cluster up -d --build ${SERVICES[*]}"
"${PC[@]}" up -d --build "${SERVICES[@]}" > "$WORK/cluster-up.log" 2>&1
check "compose up exit 0" [ $? = 0 ]
podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}'
check "postgres healthy" wait_for 60 podman healthcheck run "${PROJECT}_postgres_1"
check "node-1 healthy" wait_for 60 podman healthcheck run "${PROJECT}_node-1_1"
check "node-2 healthy" wait_for 60 podman healthcheck run "${PROJECT}_node-2_1"
two_nodes() { [ "$(get 3002 /api/cluster | json 'sorted(n["name"] for n in d["nodes"])')" = "['node-1', 'node-2']" ]; }
check "both nodes in node-2's /api/cluster" wait_for 30 two_nodes
leader=$(get 3001 /api/cluster | json 'd["leader"]')
echo "    leader: $leader"
check "one of them leads" [ "$leader" = node-1 -o "$leader" = node-2 ]
worker_on() { for p in 3001 3002; do
    [ "$(get $p /api/workers | json '[w["name"] for w in d]')" = "['cluster-worker']" ] && { echo $p; return 0; }; done; return 1; }
check "the worker is on a node" wait_for 30 worker_on
on=$(worker_on); echo "    worker on the node at :$on"

run_on() {   # run_on PORT: a job asked of that node succeeds on the worker
    local id; id=$(curl -sS "${auth[@]}" -H 'Content-Type: application/json' \
        -d '{"command": "echo ran on $(hostname)"}' "localhost:$1/api/jobs" | json 'd["id"]')
    succeeded() { [ "$(get "$1" "/api/jobs/$2" | json 'd["status"]')" = succeeded ]; }
    wait_for 30 succeeded "$1" "$id"
}
check "a job asked of node-1 runs" run_on 3001
check "a job asked of node-2 runs" run_on 3002

code=$(curl -sS -o /dev/null -w '%{http_code}' "${auth[@]}" -H 'Content-Type: application/json' \
    -d '{"schedule": "* * * * * *", "command": "echo tick", "jobName": "tick"}' localhost:3002/api/tasks)
check "POST /api/tasks on node-2 -> 201" [ "$code" = 201 ]
check "node-1 has the task" [ "$(get 3001 /api/tasks | json 'len(d)')" = 1 ]
ticks() { [ "$(get 3001 "/api/jobs?task=1&status=succeeded" | json 'len(d)')" -ge "$1" ]; }
check "the task fires from the leader and runs" wait_for 20 ticks 2

echo "== stop the node the worker is on"
stopped=$([ "$on" = 3001 ] && echo node-1 || echo node-2)
other=$([ "$on" = 3001 ] && echo 3002 || echo 3001)
podman stop "${PROJECT}_${stopped}_1" 2>&1 | quiet >/dev/null
moved() { [ "$(worker_on)" = "$other" ]; }
check "the worker is on the other node" wait_for 20 moved
leads() { [ "$(get "$other" /api/health | json 'd["leader"]')" = True ]; }
check "the other node leads" wait_for 20 leads
before=$(get "$other" "/api/jobs?task=1&status=succeeded&limit=1000" | json 'len(d)')
more() { [ "$(get "$other" "/api/jobs?task=1&status=succeeded&limit=1000" | json 'len(d)')" -gt $((before + 2)) ]; }
check "the task goes on firing and running" wait_for 20 more
doubled=$(get "$other" "/api/jobs?task=1&limit=1000" | json 'len(d) - len({j["scheduledAt"] for j in d})')
check "no second fired twice" [ "$doubled" = 0 ]
podman start "${PROJECT}_${stopped}_1" 2>&1 | quiet >/dev/null
check "the stopped node comes back" wait_for 60 podman healthcheck run "${PROJECT}_${stopped}_1"
check "both nodes again" wait_for 30 two_nodes

echo "== logs: nothing about tracebacks, read-only file systems or permissions"
for s in "${SERVICES[@]}"; do
    c=${PROJECT}_${s}_1
    lines=$(podman logs "$c" 2>&1 | grep -i -E 'traceback|read-only file system|dropin|permission denied' )
    [ -n "$lines" ] && echo "$lines" | cut -c1-200 | sed 's/^/    /'
    check "$c log clean" [ -z "$lines" ]
done
summary
