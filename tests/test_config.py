"""Settings from GATEWAY_* variables: typed, checked, and clear about what is wrong."""

import pytest

from gateway.config import ConfigError, settings_from_env
from gateway.sql import parse_queries


def test_settings_from_environment_variables() -> None:
    settings = settings_from_env(
        {
            "GATEWAY_DATABASE_URL": "postgresql://db/x",
            "GATEWAY_REDIS_URL": "redis://r:6379/0",
            "GATEWAY_MAX_SLOTS_PER_HOLD": "4",
            "GATEWAY_REDIS_TIMEOUT_S": "0.25",
            "GATEWAY_TEST_DATABASE_URL": "ignored",
            "OTHER": "ignored",
        }
    )
    assert settings.database_url == "postgresql://db/x"
    assert settings.max_slots_per_hold == 4
    assert settings.redis_timeout_s == 0.25
    assert (settings.default_ttl_s, settings.min_ttl_s, settings.max_ttl_s) == (300, 5, 3600)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GATEWAY_MAX_SLOTS_PER_HOLD": "many"}, "GATEWAY_MAX_SLOTS_PER_HOLD"),
        ({"GATEWAY_MAX_SLOTS_PER_HOLD": "0"}, "GATEWAY_MAX_SLOTS_PER_HOLD"),
        ({"GATEWAY_DATABSE_URL": "typo"}, "unknown setting GATEWAY_DATABSE_URL"),
        ({"GATEWAY_MIN_TTL_S": "600"}, "default_ttl_s"),
        ({"GATEWAY_IDEMPOTENCY_RETENTION_S": "60"}, "GATEWAY_IDEMPOTENCY_RETENTION_S"),
    ],
)
def test_bad_configuration_fails_with_a_clear_message(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_env(environ)


def test_queries_file_parses_into_named_statements_without_their_descriptions() -> None:
    queries = parse_queries("-- one --\n-- The first.\nSELECT 1;\n\n-- two --\n-- The second.\nSELECT 2;\n")
    assert queries == {"one": "SELECT 1;", "two": "SELECT 2;"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- one --\nSELECT 1;\n-- one --\nSELECT 2;\n")
