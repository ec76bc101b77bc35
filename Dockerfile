# rollbackd in a container.
#
#   docker build -t rollbackd .
#   docker run -d --name rollbackd --init --stop-timeout 900 -p 9095:9095 \
#       -v rollbackd-state:/var/lib/rollbackd \
#       -v /etc/rollbackd:/etc/rollbackd:ro \
#       rollbackd
#
# Listen address: inside a container the daemon must listen on 0.0.0.0:9095, not
# on the default 127.0.0.1:9095 (the container's own loopback, which a published
# port never reaches). ROLLBACKD_DAEMON__LISTEN below sets that and overrides
# [daemon] listen in the mounted config; publish another host port with -p.
#
# --init reaps the grandchildren of git and ssh; --stop-timeout gives SIGTERM
# time to finish a rollback step in progress (the systemd unit allows 15 min).
FROM python:3.11-slim

# git for the git executor (fetch/push), openssh-client for ssh remotes,
# ca-certificates for https remotes, Prometheus and notifiers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A non-root user with a fixed numeric id (Kubernetes runAsNonRoot can check it);
# its home is the state directory, where git finds ~/.ssh and ~/.gitconfig.
RUN groupadd --system --gid 10001 rollbackd \
    && useradd --system --uid 10001 --gid rollbackd --home-dir /var/lib/rollbackd \
        --no-create-home --shell /usr/sbin/nologin rollbackd \
    && install -d -o rollbackd -g rollbackd -m 0750 /var/lib/rollbackd \
    && install -d -m 0755 /etc/rollbackd

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Only what the package needs (pyproject names README.md as its readme); the
# virtualenv and caches of a work tree never enter the image.
WORKDIR /tmp/rollbackd-src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip install --no-cache-dir . \
    && rm -rf /tmp/rollbackd-src

# The default rule set, where config.toml's rules = ["rules/*.toml"] finds it,
# and the documented example config. Mount your own config.toml over
# /etc/rollbackd (or just the file).
COPY rules /etc/rollbackd/rules
COPY config.example.toml /etc/rollbackd/config.example.toml

ENV ROLLBACKD_DAEMON__LISTEN=0.0.0.0:9095 \
    ROLLBACKD_DAEMON__STATE_DIR=/var/lib/rollbackd

WORKDIR /var/lib/rollbackd
USER 10001:10001

# The incident journal (SQLite, WAL): keep it across container restarts, or a
# restart could forget a rollback in progress.
VOLUME /var/lib/rollbackd
EXPOSE 9095

# Liveness through GET /healthz, with the Python already in the image (no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:9095/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["rollbackd"]
CMD ["run", "--config", "/etc/rollbackd/config.toml"]
