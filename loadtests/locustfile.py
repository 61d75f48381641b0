"""Load scenarios for the reservation gateway, each checking its own outcome. See loadtests/README.md.

Name one scenario by its user class (or select it by tag, `-T flash-sale`); with neither, the storm runs:

    locust -f loadtests/locustfile.py --headless -u 1000 -r 1000 -t 60s --host http://127.0.0.1:8000 StormUser

    StormUser            storm        N users, one slot, one instant: exactly one 201, N-1 409s
    FlashSaleUser        flash-sale   users buy groups of seats until the event is sold out; no seat twice
    HoldMixUser          mix          hold / confirm / cancel / read / expire at a steady rate
    ConfirmVsExpiryUser  edge         confirms sent at the instant of expiry, against a rival: one outcome
    DegradedStormUser    degraded     the storm against a gateway whose Redis is down (db-only)
    GaSaleUser           ga-sale      general admission: pools of two events sold out, limits per holder

When the test stops each prints a summary (answers by status, latency percentiles, a PASS or FAIL verdict) and
a breach makes locust exit with 1. Settings come from environment variables named in each scenario's module.
"""

import sys
from pathlib import Path
from typing import Any

from locust import User, events
from locust.env import Environment

# Locust imports this file by its path; make the `loadtests` package importable from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.scenarios.confirm_vs_expiry import ConfirmVsExpiryUser
from loadtests.scenarios.flash_sale import FlashSaleUser
from loadtests.scenarios.ga_sale import GaSaleUser
from loadtests.scenarios.mix import HoldMixUser
from loadtests.scenarios.storm import DegradedStormUser, StormUser

__all__ = [
    "ConfirmVsExpiryUser",
    "DegradedStormUser",
    "FlashSaleUser",
    "GaSaleUser",
    "HoldMixUser",
    "StormUser",
]


def _tags(user_class: type[User]) -> set[str]:
    return set().union(*(getattr(task, "locust_tag_set", set()) for task in user_class.tasks))


@events.init.add_listener
def _one_scenario(environment: Environment, **_: Any) -> None:
    """Scenarios are judged one at a time: pick one, by class name or tag; none named means the storm."""
    options = environment.parsed_options
    tags, excluded = (
        set(getattr(options, "tags", None) or ()),
        set(getattr(options, "exclude_tags", None) or ()),
    )
    # Locust applies -T/-E when the test starts; a scenario they leave without a task is not selected at all.
    chosen = [
        user_class
        for user_class in environment.user_classes
        if (not tags or _tags(user_class) & tags) and not _tags(user_class) & excluded
    ]
    if len(chosen) > 1 and not (getattr(options, "user_classes", None) or tags or excluded):
        chosen = [StormUser]
    if len(chosen) != 1:
        names = ", ".join(user_class.__name__ for user_class in chosen) or "none"
        sys.exit(
            f"choose exactly one scenario, by user class name or tag (chosen: {names}); "
            f"the scenarios: {', '.join(__all__)}"
        )
    environment.user_classes[:] = chosen
