"""Operator commands that talk to a running gateway over HTTP: `holds`, `slot`, `stats` and `availability`
read it; `inventory` reads or replaces an event's inventory, `block` and `unblock` change its seats; `events`
reads or tails the hold event feed; `webhooks` lists, adds, deletes and redelivers webhook endpoints (their
arguments are in ops_args). They need none of the server's settings and import neither Litestar nor
Prometheus, so they run from any machine that reaches it; they do need the `cli` extra (tabulate), which
serving does not."""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import httpx
from tabulate import tabulate

from gateway import shard_map
from gateway.ops_args import DEFAULT_URL, usage_error

MAX_PAGE = 1000  # the gateway's largest page of /v1/holds and /v1/hold-events
# How long one request of `events --follow` waits for an event (the gateway allows up to 30 s).
FOLLOW_WAIT_S = 25
# After a failed request of `events --follow` (the gateway restarting), ask again this much later.
FOLLOW_RETRY_S = 1.0
SLOTS_WIDTH = 32  # characters of the slots column before it is cut
HOLDER_WIDTH = 24
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase display

Json = dict[str, Any]


class Problem(Exception):
    """The gateway answered with an error status; str() is the line to print after `gateway: `."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        try:
            body = response.json()
            title, detail = body["title"], body["detail"]
        except (ValueError, TypeError, KeyError):  # not problem+json: a proxy's page, another server
            title, detail = response.reason_phrase, f"not a gateway answer from {response.url}"
        message = f"{self.status} {title}: {detail}"
        if self.status == 401:
            message += " (pass --token or set GATEWAY_OPS_TOKEN)"
        super().__init__(message)


def human_ttl(ttl_ms: int | None) -> str:
    """Time left: `9.3s` below a minute, `4m 12s` below an hour, `1h 05m` above; `—` when there is none."""
    if ttl_ms is None:
        return "—"
    if ttl_ms < 60_000:
        return f"{ttl_ms // 100 / 10:.1f}s"  # floored: 59.96 s must not read as 60.0s
    total_s = ttl_ms // 1000
    if total_s < 3600:
        return f"{total_s // 60}m {total_s % 60:02d}s"
    return f"{total_s // 3600}h {total_s % 3600 // 60:02d}m"


def clock(timestamp: str | None) -> str:
    """An ISO timestamp of the gateway as local HH:MM:SS, the zone of the operator's terminal."""
    return "—" if timestamp is None else datetime.fromisoformat(timestamp).astimezone().strftime("%H:%M:%S")


def slots_text(slots: list[str], width: int = SLOTS_WIDTH) -> str:
    """Comma-joined; past `width`, as many as fit and how many more there are."""
    text = ",".join(slots)
    if len(text) <= width:
        return text
    room = width - len(f",… +{len(slots)}")
    head = text[: room + 1].rpartition(",")[0]  # whole slots only: one more character shows if the last ended
    shown = head.count(",") + 1 if head else 0
    return f"{head},… +{len(slots) - shown}" if head else f"… +{len(slots)}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _segment(value: str) -> str:
    # httpx resolves `.` and `..` path segments (`/events/../stats` becomes `/stats`); escaped, they stay ids.
    return "%2E" * len(value) if value in {".", ".."} else quote(value, safe="")


def _answer(response: httpx.Response) -> Json:
    if response.is_error:
        raise Problem(response)
    body: Json = response.json()
    return body


def _get(client: httpx.Client, path: str, params: dict[str, str | int] | None = None) -> Json:
    return _answer(client.get(path, params=params))


def _event_path(args: argparse.Namespace, rest: str) -> str:
    return f"/v1/events/{_segment(args.event_id)}/{rest}"


def fetch_holds(client: httpx.Client, args: argparse.Namespace) -> Json:
    """Pages followed up to --limit holds, in the API's own shape; next_cursor says whether more are left."""
    filters = {
        "event_id": args.event,
        "holder": args.holder,
        "status": None if args.status == "all" else args.status,
        "expiring_within_seconds": args.expiring_s,
    }
    params: dict[str, str | int] = {name: value for name, value in filters.items() if value is not None}
    holds: list[Json] = []
    cursor: str | None = None
    while True:
        page_params = {**params, "limit": min(args.limit - len(holds), MAX_PAGE)}
        page = _get(client, "/v1/holds", page_params if cursor is None else {**page_params, "cursor": cursor})
        holds += page["holds"]
        cursor = page["next_cursor"]
        if cursor is None or len(holds) >= args.limit:
            return {"holds": holds, "next_cursor": cursor}


def render_holds(data: Json) -> str:
    rows = [
        [
            hold["id"],
            hold["event_id"],
            slots_text(hold["slots"]),
            _cut(hold["holder"], HOLDER_WIDTH),
            hold["status"],
            human_ttl(hold["ttl_ms"]),
            clock(hold["expires_at"]),
        ]
        for hold in data["holds"]
    ]
    more = ", more… (raise --limit)" if data["next_cursor"] or data.get("more_in_pods") else ""
    footer = f"{len(rows)} hold{'' if len(rows) == 1 else 's'}{more}"
    if not rows:
        return footer
    headers = ["hold", "event", "slots", "holder", "status", "ttl", "expires"]
    # Numbers in ids ("007") stay text; the TTL is right-aligned so its units line up.
    colalign = ("left", "left", "left", "left", "left", "right", "left")
    return tabulate(rows, headers, disable_numparse=True, colalign=colalign) + "\n" + footer


def fetch_slot(client: httpx.Client, args: argparse.Namespace) -> Json:
    return _get(client, f"/v1/events/{_segment(args.event_id)}/slots/{_segment(args.slot_id)}")


def render_slot(data: Json) -> str:
    rows = [("event", data["event_id"]), ("slot", data["slot_id"]), ("state", data["state"])]
    rows += [("ttl", human_ttl(data["ttl_ms"]))]
    rows += [("expires", clock(data["expires_at"]))]
    return tabulate(rows, tablefmt="plain", disable_numparse=True)


def fetch_stats(client: httpx.Client, args: argparse.Namespace) -> Json:
    return _get(client, "/v1/stats" if args.event is None else f"/v1/events/{_segment(args.event)}/stats")


def _ms(value: float | None) -> str:
    return "no answer" if value is None else f"{value:.1f} ms"


def _fields(group: Json) -> list[list[str]]:
    # Names and values as in the JSON, names spaced: what a reader sees here is what a script reads in --json.
    return [[name.replace("_", " "), json.dumps(value)] for name, value in group.items()]


def render_stats(data: Json) -> str:
    gateway = [["event", data["event_id"] or "all events"], ["mode", data["mode"]]]
    if data["mode_reason"]:
        gateway.append(["mode reason", data["mode_reason"]])
    gateway += [
        ["sweeper lag", f"{data['sweeper']['lag_ms']} ms"],
        ["postgres round trip", _ms(data["round_trip_ms"]["postgres_ms"])],
        ["redis round trip", _ms(data["round_trip_ms"]["redis_ms"])],
        ["generated", clock(data["generated_at"])],
    ]
    agreement = data["agreement"]
    tables = [
        ("gateway", gateway),
        ("holds now", _fields(data["holds"])),
        ("redis/postgres", [["not checked", "no Redis in use"]] if agreement is None else _fields(agreement)),
        ("since start, all events", _fields(data["counters"])),  # the counters ignore --event
    ]
    return "\n\n".join(tabulate(rows, [title, ""], disable_numparse=True) for title, rows in tables)


def fetch_availability(client: httpx.Client, args: argparse.Namespace) -> Json:
    return _get(client, _event_path(args, "availability"))


def _limit(value: int | None) -> str:
    return "none" if value is None else str(value)


def _release(next_release_at: str | None, as_of: str) -> str:
    """When a pool's units may come back: the time, and how far off by the gateway's clock (as_of)."""
    if next_release_at is None:
        return "—"
    ms = (datetime.fromisoformat(next_release_at) - datetime.fromisoformat(as_of)) / timedelta(milliseconds=1)
    return f"{clock(next_release_at)} ({f'in {human_ttl(int(ms))}' if ms > 0 else 'due'})"


def render_availability(data: Json) -> str:
    event = [
        ["event", data["event_id"]],
        ["as of", clock(data["as_of"])],
        ["limit per holder", _limit(data["limits"]["per_holder"])],
        ["limit per hold", _limit(data["limits"]["per_hold"])],
    ]
    tables = [
        tabulate(event, ["availability", ""], disable_numparse=True),
        tabulate(_fields(data["seats"]), ["seats", ""], disable_numparse=True),
    ]
    pools = [
        [
            pool["pool_id"],
            pool["capacity"],
            pool["available"],
            pool["held"],
            pool["confirmed"],
            _release(pool["next_release_at"], data["as_of"]),
        ]
        for pool in data["pools"]
    ]
    if pools:
        headers = ["pool", "capacity", "available", "held", "confirmed", "next release"]
        colalign = ("left", "right", "right", "right", "right", "left")
        tables.append(tabulate(pools, headers, disable_numparse=True, colalign=colalign))
    else:
        tables.append("no pools")
    return "\n\n".join(tables)


def fetch_inventory(client: httpx.Client, args: argparse.Namespace) -> Json:
    """The inventory (GET), or with --set the summary of the one just put in its place (PUT)."""
    path = _event_path(args, "inventory")
    if args.inventory_body is None:
        return _get(client, path)
    headers = {"Content-Type": "application/json"}
    return _answer(client.put(path, content=args.inventory_body, headers=headers))


def render_inventory(data: Json) -> str:
    """The inventory's summary: never its whole seat list, which may be 100,000 seats long (--json has it)."""
    summary = [["event", data["event_id"]], ["seats total", str(data["seats_total"])]]
    if "blocked" in data:  # a PUT answers with the summary alone
        summary.append(["seats blocked", str(len(data["blocked"]))])
    summary += [
        ["limit per holder", _limit(data["limits"]["per_holder"])],
        ["limit per hold", _limit(data["limits"]["per_hold"])],
    ]
    tables = [tabulate(summary, ["inventory", ""], disable_numparse=True)]
    pools = [[pool["pool_id"], pool["capacity"]] for pool in data["pools"]]
    tables.append(
        tabulate(pools, ["pool", "capacity"], disable_numparse=True, colalign=("left", "right"))
        if pools
        else "no pools"
    )
    if data.get("blocked"):
        blocked = [[seat["seat_id"], seat["reason"], clock(seat["blocked_at"])] for seat in data["blocked"]]
        tables.append(tabulate(blocked, ["blocked seat", "reason", "since"], disable_numparse=True))
    return "\n\n".join(tables)


def _change_seats(client: httpx.Client, args: argparse.Namespace) -> Json:
    body: Json = {"seats": args.seats}
    if getattr(args, "reason", None) is not None:
        body["reason"] = args.reason
    return _answer(client.post(_event_path(args, f"seats/{args.command}"), json=body))


def render_seats_changed(data: Json) -> str:
    rows = [("event", data["event_id"]), ("changed", data["changed"])]
    rows += [("blocked total", data["blocked_total"])]
    return tabulate(rows, tablefmt="plain", disable_numparse=True)


WEBHOOKS_PATH = "/v1/webhook-endpoints"
URL_WIDTH = 40
ERROR_WIDTH = 48


def fetch_webhooks(client: httpx.Client, args: argparse.Namespace) -> Json:
    """The endpoints (GET); or, with --add, --delete or --redeliver, what that action answered."""
    if args.add is not None:
        endpoint = {"url": args.add} | ({"secret": args.secret} if args.secret is not None else {})
        return _answer(client.post(WEBHOOKS_PATH, json=endpoint))
    if args.delete is not None:
        response = client.delete(f"{WEBHOOKS_PATH}/{_segment(args.delete)}")
        if response.is_error:
            raise Problem(response)
        return {"deleted": args.delete}
    if args.redeliver is not None:
        body = None if args.after is None else {"after": args.after}
        return _answer(client.post(f"{WEBHOOKS_PATH}/{_segment(args.redeliver)}/redeliver", json=body))
    return _get(client, WEBHOOKS_PATH)


def render_webhooks(data: Json) -> str:
    if "deleted" in data:
        return f"deleted webhook endpoint {data['deleted']} and the deliveries still owed to it"
    if "redelivered" in data:
        count = data["redelivered"]
        return f"{count} deliver{'y' if count == 1 else 'ies'} pending again"
    if "secret" in data:
        rows = [("id", data["id"]), ("url", data["url"]), ("secret", data["secret"])]
        rows += [("created", clock(data["created_at"]))]
        table = tabulate(rows, tablefmt="plain", disable_numparse=True)
        return f"{table}\nthe secret is shown this once: the receiver verifies signatures with it"
    endpoints = data["webhook_endpoints"]
    footer = f"{len(endpoints)} webhook endpoint{'' if len(endpoints) == 1 else 's'}"
    if not endpoints:
        return footer
    listed = [
        [
            endpoint["id"],
            _cut(endpoint["url"], URL_WIDTH),
            endpoint["pending"],
            endpoint["delivered"],
            endpoint["failed"],
            "—"
            if endpoint["last_error"] is None
            else f"{clock(endpoint['last_error_at'])} {_cut(endpoint['last_error'], ERROR_WIDTH)}",
        ]
        for endpoint in endpoints
    ]
    headers = ["endpoint", "url", "pending", "delivered", "failed", "last error"]
    colalign = ("left", "left", "right", "right", "right", "left")
    return tabulate(listed, headers, disable_numparse=True, colalign=colalign) + "\n" + footer


Fetch = Callable[[httpx.Client, argparse.Namespace], Json]
_HANDLERS: dict[str, tuple[Fetch, Callable[[Json], str]]] = {
    "holds": (fetch_holds, render_holds),
    "slot": (fetch_slot, render_slot),
    "stats": (fetch_stats, render_stats),
    "availability": (fetch_availability, render_availability),
    "inventory": (fetch_inventory, render_inventory),
    "block": (_change_seats, render_seats_changed),
    "unblock": (_change_seats, render_seats_changed),
    "webhooks": (fetch_webhooks, render_webhooks),
}


def event_line(event: Json) -> str:
    """One event as a line: feed id, time, type, hold, what it holds, holder, status and time left."""
    hold = event["hold"]
    what = hold["event_id"] or "(several)"
    taken = [
        f"{item['event_id']}:{item['pool_id']}x{item['quantity']}" if "pool_id" in item else item["event_id"]
        for item in hold["items"]
        if hold["event_id"] is None or "pool_id" in item
    ]
    held = slots_text(hold["slots"] + taken)
    fields = [
        str(event["id"]),
        clock(event["occurred_at"]),
        f"{event['type']:<14}",
        hold["id"],
        what,
        held,
        _cut(hold["holder"], HOLDER_WIDTH),
        f"ttl {human_ttl(hold['ttl_ms'])}" if hold["ttl_ms"] is not None else "",
    ]
    return "  ".join(fields).rstrip()


def show_events(client: httpx.Client, args: argparse.Namespace) -> int:
    """Print events after --after, up to --limit (following pages); or, with --follow, as they happen."""
    cursor = args.after or ("latest" if args.follow else "0")
    printed = 0
    while args.follow or printed < args.limit:
        limit = MAX_PAGE if args.follow else min(args.limit - printed, MAX_PAGE)
        params: dict[str, str | int] = {"after": cursor, "limit": limit}
        if args.follow:
            params["wait_seconds"] = FOLLOW_WAIT_S
        try:
            page = _answer(
                client.get("/v1/hold-events", params=params, timeout=args.timeout_s + FOLLOW_WAIT_S)
            )
        except (Problem, httpx.TransportError) as exc:
            if not args.follow or (isinstance(exc, Problem) and exc.status < 500):
                raise
            print(f"gateway: {_error(exc, str(client.base_url))}", file=sys.stderr, flush=True)
            time.sleep(FOLLOW_RETRY_S)
            continue
        for event in page["events"]:
            print(json.dumps(event, ensure_ascii=False) if args.json else event_line(event), flush=True)
        printed += len(page["events"])
        cursor = page["next_cursor"]
        if not page["events"] and not args.follow:
            break
    if not args.follow and not args.json:
        print(f"{printed} event{'' if printed == 1 else 's'}; next: gateway events --after {cursor}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one of the ops_args commands. Every failure is one line on stderr and exit 1, no traceback."""
    url = (args.url or os.environ.get("GATEWAY_URL") or DEFAULT_URL).rstrip("/")
    token = args.token or os.environ.get("GATEWAY_OPS_TOKEN")
    watch_s: float | None = getattr(args, "watch_s", None)
    if getattr(args, "count", None) is not None and watch_s is None:
        print("gateway: --count needs --watch", file=sys.stderr)
        return 2
    usage = usage_error(args)
    if usage is not None:
        print(f"gateway: {usage}", file=sys.stderr)
        return 2
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with (
            httpx.Client(base_url=url, headers=headers, timeout=args.timeout_s) as client,
            ExitStack() as pods,
        ):
            args.pod_clients = _pod_clients(args, headers, pods)
            if args.command == "events":
                return show_events(client, args)
            if watch_s is None:
                print(_frame(client, args, indent=2), flush=True)  # a closed pipe fails here, in the handler
                return 0
            return _watch(client, args, url, watch_s)
    except (Problem, httpx.TransportError, ValueError, KeyError, TypeError) as exc:
        print(f"gateway: {_error(exc, url)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if watch_s is not None or getattr(args, "follow", False) else 130
    except BrokenPipeError:
        # The reader went away (`| head`): point stdout at nothing so the flush at exit does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _frame(client: httpx.Client, args: argparse.Namespace, indent: int | None) -> str:
    fetch, render = _HANDLERS[args.command]
    if args.pod_clients:
        return _pods_frame(args, indent)
    data = fetch(client, args)
    return json.dumps(data, ensure_ascii=False, indent=indent) if args.json else render(data)


# The views over all events that --map asks of every pod.
_FANNED_OUT = frozenset({"holds", "stats"})


def _pod_clients(
    args: argparse.Namespace, headers: dict[str, str], stack: ExitStack
) -> dict[str, httpx.Client]:
    """With --map, for `holds` and `stats` over all events: a client for each pod's gateway; else none."""
    if getattr(args, "shard_map", None) is None or args.command not in _FANNED_OUT or args.event is not None:
        return {}
    the_map = shard_map.load(Path(args.shard_map))
    missing = [pod for pod, spec in the_map.pods.items() if spec.gateway_url is None]
    if missing:
        raise ValueError(f"the shard map gives no gateway_url for pods {', '.join(missing)}")
    return {
        pod: stack.enter_context(
            httpx.Client(base_url=cast(str, spec.gateway_url), headers=headers, timeout=args.timeout_s)
        )
        for pod, spec in the_map.pods.items()
    }


def _pods_frame(args: argparse.Namespace, indent: int | None) -> str:
    """Every pod's answer: holds merged in expiry order (up to --limit), stats one pod after another."""
    fetch, render = _HANDLERS[args.command]
    answers = {pod: fetch(client, args) for pod, client in args.pod_clients.items()}
    if args.command == "holds":
        holds = sorted((hold for answer in answers.values() for hold in answer["holds"]), key=_expiry_order)
        more = [pod for pod, answer in answers.items() if answer["next_cursor"] is not None]
        if len(holds) > args.limit:
            more = sorted({shard_map.pod_of_hold(hold["id"]) for hold in holds[args.limit :]} | set(more))
        data: Json = {"holds": holds[: args.limit], "next_cursor": None, "more_in_pods": more or None}
        return json.dumps(data, ensure_ascii=False, indent=indent) if args.json else render(data)
    if args.json:
        return json.dumps({"pods": answers}, ensure_ascii=False, indent=indent)
    return "\n\n".join(f"pod {pod}\n\n{render(answer)}" for pod, answer in answers.items())


def _expiry_order(hold: Json) -> tuple[str, str]:
    return (hold["expires_at"], hold["id"])


def _error(exc: Exception, url: str) -> str:
    if isinstance(exc, Problem):
        return str(exc)
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach {url}: {exc or type(exc).__name__}"
    # Not JSON, or without the fields this command reads: another server, or a gateway of another version.
    return f"{url} gave an answer this command does not understand: {exc!r}"


def _watch(client: httpx.Client, args: argparse.Namespace, url: str, watch_s: float) -> int:
    """Refresh until Ctrl-C or --count. A gateway that is down or answers 5xx is asked again at the next
    refresh (a restart is when an operator watches); a 4xx (token, filter) would only repeat, so it stops."""
    clear = sys.stdout.isatty() and not args.json
    refreshes = 0
    while True:
        try:
            # Under --json, one line per refresh: JSON Lines, which a script reads as they come.
            text, failed = _frame(client, args, indent=None), False
        except (Problem, httpx.TransportError) as exc:
            if isinstance(exc, Problem) and exc.status < 500:
                raise
            text, failed = f"gateway: {_error(exc, url)}", True
        if clear:
            sys.stdout.write(CLEAR_SCREEN)
        elif refreshes and not args.json:
            print()  # a file or a pipe gets every frame, a blank line apart
        if not args.json:
            print(f"{args.command} · {url} · {time.strftime('%H:%M:%S')} · every {watch_s:g}s (Ctrl-C stops)")
        print(text, file=sys.stderr if failed else sys.stdout, flush=True)
        refreshes += 1
        if args.count is not None and refreshes >= args.count:
            return 1 if failed else 0
        time.sleep(watch_s)
