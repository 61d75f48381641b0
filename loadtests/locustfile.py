"""Load scenarios for the reservation gateway, each checking its own outcome. See loadtests/README.md.

Name one scenario by its user class (or select it by tag, `-T flash-sale`); with neither, the storm runs:

    locust -f loadtests/locustfile.py --headless -u 1000 -r 1000 -t 60s --host http://127.0.0.1:8000 StormUser

    StormUser            storm        N users, one slot, one instant: exactly one 201, N-1 409s
    FlashSaleUser        flash-sale   users buy groups of seats until the event is sold out; no seat twice
    HoldMixUser          mix          hold / confirm / cancel / read / expire at a steady rate
    ConfirmVsExpiryUser  edge         confirms sent at the instant of expiry, against a rival: one outcome
    DegradedStormUser    degraded     the storm against a gateway whose Redis is down (db-only)

When the test stops each prints a summary (answers by status, latency percentiles, a PASS or FAIL verdict) and
a breach makes locust exit with 1. Settings come from environment variables named in each scenario's module.
"""

import sys
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment

# Locust imports this file by its path; make the `loadtests` package importable from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.scenarios.confirm_vs_expiry import ConfirmVsExpiryUser  # noqa: E402 - needs the path above
from loadtests.scenarios.flash_sale import FlashSaleUser  # noqa: E402 - needs the path above
from loadtests.scenarios.mix import HoldMixUser  # noqa: E402 - needs the path above
from loadtests.scenarios.storm import DegradedStormUser, StormUser  # noqa: E402 - needs the path above

__all__ = ["ConfirmVsExpiryUser", "DegradedStormUser", "FlashSaleUser", "HoldMixUser", "StormUser"]


@events.init.add_listener
def _one_scenario(environment: Environment, **_: Any) -> None:
    """Scenarios are judged one at a time: pick one, by class name or tag; none named means the storm."""
    # A tag filter (-T) leaves the other scenarios without tasks; they cannot run, so they are not selected.
    environment.user_classes[:] = [user_class for user_class in environment.user_classes if user_class.tasks]
    options = environment.parsed_options
    named = bool(options and (options.user_classes or options.tags))
    if len(environment.user_classes) > 1 and not named:
        environment.user_classes[:] = [StormUser]
    if len(environment.user_classes) != 1:
        chosen = ", ".join(user_class.__name__ for user_class in environment.user_classes) or "none"
        sys.exit(f"choose exactly one scenario (by user class name or tag); chosen: {chosen}. Scenarios: "
                 f"{', '.join(__all__)}")
