"""docker-compose.yml, checked without a Docker engine: it parses, its services name only services that exist,
and every gateway in it is configured with settings the gateway accepts (defaults of `${VAR:-default}`
filled in), Sentinel's included."""

import re
from pathlib import Path
from typing import Any

import yaml

from gateway import shard_map
from gateway.config import Settings, settings_from_env

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
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
        name: _settings(service)
        for name, service in _services().items()
        if service.get("image") == "reservation-gateway:local" and "environment" in service
    }
    assert {"gateway", "gateway-sentinel", "gateway-pod-a", "gateway-pod-b"} <= set(gateways)
    for settings in gateways.values():
        assert settings.redis_configured
        assert settings.database_url is not None


def test_the_sentinel_profile_watches_the_master_its_gateway_asks_for() -> None:
    services = _services()
    settings = _settings(services["gateway-sentinel"])
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


def _settings(service: dict[str, Any]) -> Settings:
    return settings_from_env(
        {key: _DEFAULTED.sub(r"\1", str(v)) for key, v in service["environment"].items()}
    )


def test_the_pods_profile_serves_each_pod_of_its_shard_map_behind_sentinel() -> None:
    """Each pod gateway serves a pod of deploy/shard-map.json (mounted where its setting says), the map's
    pods are exactly those gateways', each pod's Redis master is watched by the profile's Sentinels under the
    name its gateway asks for, and `pods-init` sets the databases up from the same map before they start."""
    services = _services()
    the_map = shard_map.load(REPO / "deploy" / "shard-map.json")
    pod_gateways = {name: service for name, service in services.items() if name.startswith("gateway-pod-")}
    served = set()
    for service in pod_gateways.values():
        settings = _settings(service)
        assert settings.pod in the_map.pods
        served.add(settings.pod)
        assert f"./deploy/shard-map.json:{settings.shard_map}:ro" in service["volumes"]
        assert service["depends_on"]["pods-init"]["condition"] == "service_completed_successfully"
        for host, _ in settings.sentinel_addresses:
            assert f"sentinel monitor {settings.redis_sentinel_master} " in services[host]["entrypoint"][-1]
    assert served == set(the_map.pods)
    init = services["pods-init"]
    assert init["command"][-1] == "init"
    assert f"./deploy/shard-map.json:{init['command'][3]}:ro" in init["volumes"]
