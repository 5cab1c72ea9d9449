#!/bin/bash
# A stop of the scheduler's container is a restart to its workers, not a
# crash: each worker hears "going away" (WebSocket close 1001), logs that
# the scheduler is restarting, and is back within seconds of the new start,
# with no 1006 ("closed uncleanly") in its log.  Also checks, once the
# image has been through `save` and `load` (what a registry push and pull
# do to file times), that Twisted's plugin cache is still fresh.
#
# Run by `make container-check` after the shared checks have built the
# image; needs podman (and the containers.conf the shared checks write).
set -uo pipefail
TOOLS=${CONTAINER_TOOLS:-../shared/tools/containers}
. "$TOOLS/env.sh"
NET=jobs-stop-check
T=
cleanup() {
    podman rm -f -v stop-sched stop-w1 >/dev/null 2>&1
    podman network rm -f "$NET" >/dev/null 2>&1
    [ -n "$T" ] && rm -rf "$T"
    true
}
cleanup
trap cleanup EXIT
T=$(mktemp -d)
podman image exists "$IMAGE" || { echo "no image $IMAGE: build it first (make container-check does)"; exit 2; }

echo "== the image after save and load: plugin cache still fresh"
# The image is removed only once it is safely saved, and loaded back under
# the same name.
if podman save -o "$T/image.tar" "$IMAGE" 2>&1 | quiet && [ -s "$T/image.tar" ]; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1
    podman load -i "$T/image.tar" 2>&1 | quiet | tail -1
    rm -f "$T/image.tar"
    check "the image came back from save and load" podman image exists "$IMAGE"
else
    bad "podman save $IMAGE"
fi
out=$(podman run --rm --read-only --user 10001:10001 "$IMAGE" twistd --help 2>&1 | quiet)
check "twistd lists both plugins" grep -q 'scheduler' <<<"$out"
check "no 'Unable to write to plugin cache' on a read-only root" [ "$(grep -c 'Unable to write to plugin cache' <<<"$out")" = 0 ]

echo "== stop the scheduler's container: its worker sees a restart"
for t in api_token tcp_token worker_token; do (umask 022; openssl rand -hex 32 > "$T/$t"); done
podman network create "$NET" >/dev/null
podman run -d --name stop-sched --network "$NET" -v "$T/api_token:/run/secrets/api_token:ro" \
    -v "$T/tcp_token:/run/secrets/tcp_token:ro" -v "$T/worker_token:/run/secrets/worker_token:ro" \
    "$IMAGE" 2>&1 | quiet >/dev/null
podman run -d --name stop-w1 --init --no-healthcheck --network "$NET" \
    -v "$T/worker_token:/run/secrets/worker_token:ro" \
    "$IMAGE" worker --name w1 --url ws://stop-sched:3000/ws/worker 2>&1 | quiet >/dev/null
welcomed() { [ "$(podman logs stop-w1 2>&1 | grep -c 'welcomed by the scheduler')" -ge "$1" ]; }
check "w1 welcomed" wait_for 30 welcomed 1
podman stop -t 20 stop-sched 2>&1 | quiet >/dev/null
check "the scheduler exited 0 on SIGTERM" [ "$(podman inspect stop-sched --format '{{.State.ExitCode}}')" = 0 ]
podman start stop-sched 2>&1 | quiet >/dev/null
check "w1 welcomed again after the restart" wait_for 40 welcomed 2
log=$(podman logs stop-w1 2>&1)
check "w1 logged the restart (1001)" grep -q 'the scheduler is restarting (1001' <<<"$log"
check "no 1006 in w1's log" [ "$(grep -c '1006' <<<"$log")" = 0 ]
grep -E 'restarting|closed|welcomed' <<<"$log" | cut -c1-160 | sed 's/^/    /'
summary
