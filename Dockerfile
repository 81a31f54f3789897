# One image for both roles: `mash host serve` (web) or `python manage.py qcluster` (worker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MASH_DATA_DIR=/data \
    MASH_API_HOST=0.0.0.0 \
    MASH_API_PORT=8000

RUN useradd --create-home --uid 1000 mash && mkdir -p /data && chown mash /data
WORKDIR /app
COPY pyproject.toml README.md manage.py ./
COPY mash_project mash_project
COPY mash_core mash_core
COPY mash_runtime mash_runtime
COPY mash_api mash_api
COPY mash_telemetry mash_telemetry
COPY pilot pilot
COPY templates templates
RUN pip install --no-cache-dir .

USER mash
VOLUME ["/data"]
EXPOSE 8000
CMD ["mash", "migrate"]
