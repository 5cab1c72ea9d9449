# One image for both roles of the job scheduler:
#
#   docker run IMAGE                  the scheduler (the default command)
#   docker run IMAGE worker --name w1 a worker agent
#
# Tokens come from secret files in /run/secrets or from environment
# variables; deploy/docker-entrypoint.sh explains which, and deploy/README.md
# shows docker run, docker compose and systemd set-ups.  Data (tasks.db,
# jobs.sqlite) lives in the /data volume.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed, numeric uid/gid: volume ownership and Kubernetes' runAsNonRoot
# can rely on it.
RUN groupadd --system --gid 10001 jobsched \
    && useradd --system --uid 10001 --gid jobsched --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin jobsched

COPY . /tmp/src
WORKDIR /tmp/src
# The project's own install, as in `make install` and `make test`: pip install .
# Then, still as root and outside the source tree, scan the plugins once so
# Twisted writes twisted/plugins/dropin.cache into site-packages: at run time
# the install is read-only to the jobsched user, and `twistd scheduler` and
# `twistd worker` must be found without writing anything there.  The --help
# runs prove both plugins load.
RUN pip install . \
    && cd / \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && test -f "$(python -c 'import os, twisted.plugins; print(os.path.dirname(twisted.plugins.__file__))')/dropin.cache" \
    && twistd scheduler --help > /dev/null \
    && twistd worker --help > /dev/null \
    && install -m 0755 /tmp/src/deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh \
    && rm -rf /tmp/src \
    && mkdir -p /data \
    && chown jobsched:jobsched /data \
    && chmod 0750 /data

# tasks.db and jobs.sqlite are relative to the working directory.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001

# 3000: REST API, dashboard and the workers' /ws/worker; 5050: TCP commands.
EXPOSE 3000 5050

# /api/health answers {"status": "ok"} without a token.  No curl in slim
# images, hence urllib.  Workers have no HTTP port: run them with
# --no-healthcheck (docker-compose.yml disables it for them).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import json, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:3000/api/health', timeout=4); raise SystemExit(json.load(r).get('status') != 'ok')"]

ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["scheduler"]
