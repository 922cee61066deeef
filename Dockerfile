# syntax=docker/dockerfile:1
# The gateway, with the PostgreSQL driver; SQLite needs nothing more. Data in /data, configuration in /config.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY plugins ./plugins
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

FROM python:3.12-slim
RUN useradd --system --uid 10001 --no-create-home gateway \
    && mkdir -p /data /config && chown gateway /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "appointment-gateway[postgres]" && rm -rf /wheels
USER gateway
WORKDIR /data
VOLUME ["/data", "/config"]
ENV GATEWAY_CONFIG=/config/config.yaml PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
CMD ["appointment-gateway", "serve", "--host", "0.0.0.0"]
