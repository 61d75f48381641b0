"""Lease values: keys.py builds them and is the one place that parses them. Expected values are literals."""

import pytest

from gateway import keys

HOLD_TOKEN = "9f86d081884c7d659a2feaa0c55ad015"  # noqa: S105 - a hold token (32 hex digits), no secret
ALICE_FINGERPRINT = "2bd806c97f0e00af"  # sha256("alice"), first 16 hex digits


def test_a_lease_value_is_the_token_then_the_holder_fingerprint() -> None:
    assert keys.lease_value(HOLD_TOKEN, "alice") == "9f86d081884c7d659a2feaa0c55ad015:2bd806c97f0e00af"


def test_parse_lease_value_gives_back_token_and_fingerprint() -> None:
    parsed = keys.parse_lease_value("9f86d081884c7d659a2feaa0c55ad015:2bd806c97f0e00af")

    assert parsed == ("9f86d081884c7d659a2feaa0c55ad015", "2bd806c97f0e00af")
    assert (parsed.token, parsed.holder_fingerprint) == (HOLD_TOKEN, ALICE_FINGERPRINT)


def test_parse_lease_value_reads_what_lease_value_built() -> None:
    assert keys.parse_lease_value(keys.lease_value("tok", "bob")) == ("tok", "81b637d8fcd2c6da")


def test_a_colon_in_the_token_stays_in_the_token() -> None:
    """The fingerprint is hex: only the last colon separates."""
    assert keys.parse_lease_value("a:b:2bd806c97f0e00af") == ("a:b", "2bd806c97f0e00af")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "9f86d081884c7d659a2feaa0c55ad015",  # no fingerprint
        ":2bd806c97f0e00af",  # no token
        "9f86d081884c7d659a2feaa0c55ad015:",  # empty fingerprint
        "9f86d081884c7d659a2feaa0c55ad015:2bd806c9",  # a fingerprint cut short
    ],
    ids=["empty", "no colon", "no token", "no fingerprint", "short fingerprint"],
)
def test_anything_else_is_not_a_lease_value(value: str) -> None:
    with pytest.raises(ValueError, match="not a lease value"):
        keys.parse_lease_value(value)


def test_a_blocked_seat_is_no_lease_value() -> None:
    """A blocked seat's slot key holds "blocked": no colon, so never a lease value, and parsing it says so."""
    assert keys.is_blocked("blocked")
    assert not keys.is_blocked(keys.lease_value("blocked", "alice"))
    assert not keys.is_blocked(None)
    with pytest.raises(ValueError, match="not a lease value"):
        keys.parse_lease_value(keys.BLOCKED_LEASE_VALUE)
