"""Settings from GATEWAY_* variables: typed, checked, and clear about what is wrong."""

import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, settings_from_env
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
    assert (settings.retention_terminal_s, settings.retention_confirmed_s) == (604_800, 0)
    assert settings.retention_archive is True


def test_retention_settings_that_keep_what_the_gateway_reads_are_accepted() -> None:
    settings = settings_from_env(
        {
            "GATEWAY_IDEMPOTENCY_RETENTION_S": "172800",
            "GATEWAY_RETENTION_TERMINAL_S": "172800",
            "GATEWAY_RETENTION_CONFIRMED_S": "7776000",
            "GATEWAY_RETENTION_ARCHIVE": "false",
        }
    )
    assert (settings.retention_terminal_s, settings.retention_confirmed_s) == (172_800, 7_776_000)
    assert settings.retention_archive is False


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GATEWAY_MAX_SLOTS_PER_HOLD": "many"}, "GATEWAY_MAX_SLOTS_PER_HOLD"),
        ({"GATEWAY_MAX_SLOTS_PER_HOLD": "0"}, "GATEWAY_MAX_SLOTS_PER_HOLD"),
        ({"GATEWAY_DATABSE_URL": "typo"}, "unknown setting GATEWAY_DATABSE_URL"),
        ({"GATEWAY_MIN_TTL_S": "600"}, "default_ttl_s"),
        ({"GATEWAY_IDEMPOTENCY_RETENTION_S": "60"}, "GATEWAY_IDEMPOTENCY_RETENTION_S"),
        # Purging a record retires its hold's token: no lease may carry it then (3600 + 2 x 43200 s here).
        ({"GATEWAY_CONFIRMED_LEASE_MS": "43200000"}, "idempotency_retention_s must exceed"),
        # The lease rebuild reads holds cancelled within a lease's life; a hold leaves after its record.
        ({"GATEWAY_RETENTION_TERMINAL_S": "3600"}, "retention_terminal_s must be at least"),
        ({"GATEWAY_RETENTION_CONFIRMED_S": "3600"}, "retention_confirmed_s must be 0"),
        ({"GATEWAY_RETENTION_ARCHIVE": "maybe"}, "GATEWAY_RETENTION_ARCHIVE"),
        # A hold's creation may not ask for more life than an extension may give it.
        ({"GATEWAY_MAX_HOLD_LIFETIME_S": "600"}, "max_hold_lifetime_s must be at least max_ttl_s"),
        ({"GATEWAY_HOLD_EVENTS_RETENTION_S": "60"}, "GATEWAY_HOLD_EVENTS_RETENTION_S"),
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


def test_the_readme_documents_every_setting() -> None:
    """The configuration table names each setting. A row may name several: `GATEWAY_DB_POOL_MIN_SIZE` /
    `_MAX_SIZE` is DB_POOL_MIN_SIZE and DB_POOL_MAX_SIZE (a suffix replaces as many words of the first)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    documented: set[str] = set()
    for row in re.findall(r"^\| (`GATEWAY_[^|]+)\|", readme, flags=re.MULTILINE):
        first, *suffixes = re.findall(r"`(_?[A-Z0-9_]+)`", row)
        words = first.removeprefix("GATEWAY_").split("_")
        documented.add("_".join(words))
        for suffix in suffixes:
            replacing = suffix.removeprefix("_").split("_")
            documented.add("_".join(words[: len(words) - len(replacing)] + replacing))
    missing = {name.upper() for name in Settings.__struct_fields__} - documented
    assert not missing, f"settings missing from the README's configuration table: {sorted(missing)}"
