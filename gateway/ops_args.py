"""The arguments of the operator commands: `holds`, `slot`, `stats` and `availability` read a running gateway;
`inventory`, `block` and `unblock` read or change an event's inventory; `events` reads (or tails) the hold
event feed; `webhooks` manages webhook endpoints. No HTTP client, so that the `gateway` command builds its
parser without loading the commands' client (ops_cli), whose tables are the `cli` extra; the status list comes
from gateway.models (msgspec only)."""

import argparse
import re
import sys
from collections.abc import Callable

from gateway.models import HOLD_STATUSES

COMMANDS = frozenset(
    {"holds", "slot", "stats", "availability", "inventory", "block", "unblock", "events", "webhooks"}
)
DEFAULT_URL = "http://127.0.0.1:8000"
MAX_EXPIRING_S = 86_400  # the gateway takes expiring_within_seconds up to a day
_DURATION = re.compile(r"\A(\d+)([smh]?)\Z")
_SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


def duration_s(text: str) -> int:
    """`90`, `90s`, `5m`, `1h` as seconds: the argparse type of --expiring."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 90, 90s, 5m or 1h")
    seconds = int(match[1]) * _SECONDS_PER_UNIT[match[2]]
    if not 1 <= seconds <= MAX_EXPIRING_S:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: 1s to 24h")
    return seconds


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)  # a ValueError here becomes argparse's "invalid parse value" message
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def file_bytes(path: str) -> bytes:
    """The content of `path` (`-`: standard input): the argparse type of --set, read whole and closed at once.
    Sent as it is: the gateway judges the JSON, and its 400 or 422 names what is wrong."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register the operator commands (COMMANDS) on the `gateway` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the gateway (default: $GATEWAY_URL, else {DEFAULT_URL})")
    common.add_argument(
        "--token", help="ops token (default: $GATEWAY_OPS_TOKEN, which is safer: a flag's value shows in ps)"
    )
    common.add_argument("--json", action="store_true", help="print the gateway's JSON instead of tables")
    common.add_argument("--timeout", dest="timeout_s", metavar="SECONDS", type=_positive(float), default=5.0)
    common.add_argument(
        "--map",
        dest="shard_map",
        metavar="FILE",
        help="with pods: `holds` and `stats` over all events ask every pod's gateway (the shard map's "
        "gateway_url) and show them together",
    )
    watch = argparse.ArgumentParser(add_help=False)
    every = "redraw every SECONDS (default 1) until Ctrl-C"
    watch.add_argument(
        "--watch", dest="watch_s", metavar="SECONDS", type=_positive(float), nargs="?", const=1.0, help=every
    )
    watch.add_argument(
        "--count", metavar="N", type=_positive(int), help="with --watch: stop after N refreshes"
    )

    holds = commands.add_parser("holds", parents=[common, watch], help="holds by expiry (default: active)")
    holds.add_argument("--event")
    holds.add_argument("--holder")
    holds.add_argument("--status", choices=[*HOLD_STATUSES, "all"], default="held", help="default: held")
    within = "only held holds expiring within DURATION: 90, 90s, 5m, 1h"
    holds.add_argument("--expiring", dest="expiring_s", metavar="DURATION", type=duration_s, help=within)
    holds.add_argument("--limit", metavar="N", type=_positive(int), default=50, help="at most N (default 50)")

    slot = commands.add_parser("slot", parents=[common], help="the state of one slot")
    slot.add_argument("event_id", metavar="EVENT")
    slot.add_argument("slot_id", metavar="SLOT")

    stats = commands.add_parser("stats", parents=[common, watch], help="mode, holds, sweeper, agreement")
    stats.add_argument("--event", help="one event's numbers (default: all events)")

    availability = commands.add_parser(
        "availability",
        parents=[common, watch],
        help="what is left of an event: its seats by state, and each pool's units",
    )
    availability.add_argument("event_id", metavar="EVENT")

    inventory = commands.add_parser(
        "inventory",
        parents=[common],
        help="an event's inventory: seat count, pools, limits and blocked seats; --set replaces it",
    )
    inventory.add_argument("event_id", metavar="EVENT")
    inventory.add_argument(
        "--set",
        dest="inventory_body",
        metavar="FILE",
        type=file_bytes,
        help='replace the inventory with FILE\'s JSON ({"seats": [...], "pools": [{"pool_id": ..., '
        '"capacity": ...}], "limits": {"per_holder": ..., "per_hold": ...}}); - reads standard input',
    )

    block = commands.add_parser(
        "block", parents=[common], help="block seats of an event's inventory (all or none)"
    )
    block.add_argument("event_id", metavar="EVENT")
    block.add_argument("seats", metavar="SEAT", nargs="+")
    block.add_argument("--reason", help="why, kept with the block (up to 500 characters)")

    unblock = commands.add_parser("unblock", parents=[common], help="unblock seats (all or none)")
    unblock.add_argument("event_id", metavar="EVENT")
    unblock.add_argument("seats", metavar="SEAT", nargs="+")

    events = commands.add_parser(
        "events", parents=[common], help="the hold event feed: every state change of every hold, in order"
    )
    events.add_argument(
        "--after",
        metavar="CURSOR",
        help="events after CURSOR, an event id or `latest` (default: the oldest kept; --follow: `latest`)",
    )
    events.add_argument(
        "--follow", action="store_true", help="keep printing events as they happen, until Ctrl-C (as tail -f)"
    )
    events.add_argument(
        "--limit",
        metavar="N",
        type=_positive(int),
        default=100,
        help="without --follow: at most N (default 100)",
    )

    webhooks = commands.add_parser(
        "webhooks",
        parents=[common],
        help="webhook endpoints and their deliveries (pending, delivered, failed); --add, --delete, "
        "--redeliver",
    )
    action = webhooks.add_mutually_exclusive_group()
    action.add_argument("--add", metavar="URL", help="register an endpoint (its secret is printed this once)")
    action.add_argument(
        "--delete", metavar="ID", help="delete an endpoint and the deliveries still owed to it"
    )
    action.add_argument("--redeliver", metavar="ID", help="send an endpoint its failed deliveries again")
    webhooks.add_argument("--secret", help="with --add: the signing secret, whsec_… (default: generated)")
    webhooks.add_argument(
        "--after",
        metavar="EVENT_ID",
        type=int,
        help="with --redeliver: also every kept event after this id (for a receiver that lost data)",
    )


def usage_error(args: argparse.Namespace) -> str | None:
    """What argparse cannot say of a command's flags: the ones that only go with another."""
    if args.command == "webhooks":
        if args.secret is not None and args.add is None:
            return "--secret goes with --add"
        if args.after is not None and args.redeliver is None:
            return "--after goes with --redeliver"
    return None
