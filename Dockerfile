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

# The project's own install, as in `make install` and `make test`: pip
# install .  In the same layer, what a running scheduler never reads goes:
# the dependencies' own test suites (Twisted's alone is about 20 MB with
# their bytecode) and the source tree.  Bytecode for everything left is
# compiled here, since at run time the root file system is read-only and
# Python could never cache it there.
COPY . /tmp/src
RUN pip install /tmp/src \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && find "$site" -depth -type d \( -name test -o -name tests \) -exec rm -rf {} + \
    && python -m compileall -q -j 0 "$site" \
    && install -m 0755 /tmp/src/deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh \
    && rm -rf /tmp/src

# Twisted finds the twistd plugins by scanning twisted/plugins/ and keeps
# the result in dropin.cache there, rescanning (and trying to rewrite it)
# whenever a plugin file is not strictly older than the cache.  At run time
# that directory is read-only to the jobsched user, and image layers keep
# file times to the whole second: a cache written in the same second as the
# plugin files would look stale at every start.  So the plugin files are
# dated back before the scan, and the build fails if, counted in whole
# seconds as a layer stores them, the cache is not strictly newer than
# every plugin file.  The --help runs prove both plugins load.
RUN plugins="$(python -c 'import os, twisted.plugins; print(os.path.dirname(twisted.plugins.__file__))')" \
    && touch -d '2000-01-01 00:00:00' "$plugins"/*.py \
    && python -m compileall -q "$plugins" \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && twistd scheduler --help > /dev/null \
    && twistd worker --help > /dev/null \
    && python -c "import os, sys, twisted.plugins; \
d = os.path.dirname(twisted.plugins.__file__); \
cache = int(os.stat(os.path.join(d, 'dropin.cache')).st_mtime); \
stale = [n for n in os.listdir(d) if n.endswith('.py') and int(os.stat(os.path.join(d, n)).st_mtime) >= cache]; \
sys.exit('dropin.cache is not strictly newer than ' + ', '.join(stale) if stale else 0)" \
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
