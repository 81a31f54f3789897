# One image, two roles, chosen by command:
#   web:    mash host serve --host 0.0.0.0            (migrates; daphne + a local worker cluster)
#           mash host serve --host 0.0.0.0 --no-worker (web only, workers elsewhere)
#   worker: mash qcluster
# Configure with MASH_HOST_APP, MASH_DATA_DIR, DATABASE_URL (or MASH_DATABASE_URL),
# MASH_REDIS_URL, MASH_API_KEY (or MASH_API_KEY_FILE, a mounted secret). Serving on 0.0.0.0
# needs an API key (or --insecure), and answers to localhost and the container's own names:
# set MASH_ALLOWED_HOSTS to the names clients use (a proxy's public name).
# On SIGTERM the worker drains (MASH_WORKER_DRAIN_SECONDS, 20) before it exits, handing
# what still runs to other workers; `docker stop` waits only 10 s unless told more:
# `docker stop -t 40`, or `stop_grace_period: 40s` in compose.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MASH_DATA_DIR=/data \
    PILOT_WORKSPACE=/app

RUN useradd --create-home --uid 1000 mash && mkdir -p /data && chown mash /data
WORKDIR /app
COPY . /app
# Editable, like the README's install: settings find templates/ next to the packages.
RUN pip install --no-cache-dir -e . && chown -R mash /app

USER mash
VOLUME ["/data"]
EXPOSE 8000
CMD ["mash", "host", "serve", "--host", "0.0.0.0", "--port", "8000"]
