"""docker-compose.yml, checked without a Docker engine: it parses, its services name only services that exist,
and every gateway in it is configured with settings the gateway accepts (defaults of `${VAR:-default}`
filled in), Sentinel's included."""

import re
from pathlib import Path
from typing import Any

import yaml

from gateway.config import settings_from_env

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
_DEFAULTED = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


def _services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def test_every_dependency_names_a_service() -> None:
    services = _services()
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name


def test_every_gateway_is_configured_with_settings_it_accepts() -> None:
    gateways = {
        name: {key: _DEFAULTED.sub(r"\1", str(value)) for key, value in service["environment"].items()}
        for name, service in _services().items()
        if service.get("image") == "reservation-gateway:local"
    }
    assert {"gateway", "gateway-sentinel"} <= set(gateways)
    for environment in gateways.values():
        settings = settings_from_env(environment)
        assert settings.redis_configured
        assert settings.database_url is not None


def test_the_sentinel_profile_watches_the_master_its_gateway_asks_for() -> None:
    services = _services()
    settings = settings_from_env(
        {key: _DEFAULTED.sub(r"\1", str(v)) for key, v in services["gateway-sentinel"]["environment"].items()}
    )
    sentinel_hosts = [host for host, _ in settings.sentinel_addresses]
    assert len(sentinel_hosts) == 3
    for host in sentinel_hosts:
        sentinel = services[host]
        assert "sentinel" in sentinel["profiles"]
        script = sentinel["entrypoint"][-1]
        assert f"sentinel monitor {settings.redis_sentinel_master} redis 6379 2" in script
        assert "--sentinel" in script
    replica = services["redis-replica"]["command"]
    assert replica[-3:] == ["--replicaof", "redis", "6379"]
