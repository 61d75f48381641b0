# Reservation gateway: `docker build -t reservation-gateway .`
# Configure it with GATEWAY_DATABASE_URL and GATEWAY_REDIS_URL (see docker-compose.yml). The image has no
# `embedded` extra, so both must be set.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv in /opt/venv, copied whole into the runtime stage ----------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml alone, so this layer is rebuilt only when pyproject.toml
# changes. (hatchling cannot build the project itself until gateway/, db/ and lua/ are there, and copying
# those first would reinstall every dependency on each code edit.) All of them ship manylinux wheels: no
# compiler needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project: a regular (not editable) install, so the wheel's force-included db/migrations and lua/
# land in site-packages as gateway/_resources.
COPY README.md ./
COPY db ./db
COPY lua ./lua
COPY gateway ./gateway
RUN pip install --no-deps . \
    && python -c "from gateway.resources import resource_dir as r; assert '_resources' in str(r('migrations')) and '_resources' in str(r('lua'))"

# ---- runtime -------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway

# Owned by root and read-only to the service user; the bytecode was compiled at install time.
COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER gateway:gateway
EXPOSE 8000

# Liveness only (/ready also checks Postgres and Redis). There is no curl in the slim image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]

# `serve` applies pending migrations first, under a Postgres advisory lock: several replicas may start at once.
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
