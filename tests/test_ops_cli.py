"""`gateway holds | slot | stats | availability | inventory | block | unblock | events` against a real
gateway. main() runs in a worker thread: the gateway serves from this test's event loop, so a blocking client
on the loop would wait for itself forever."""

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway import ops_cli
from gateway.cli import main
from gateway.config import settings_from_env
from gateway.embedded import free_port
from tests.conftest import make_settings
from tests.support import Gateway, running_gateway

TOKEN = "t" * 24
_TTL_UNDER_A_MINUTE = re.compile(r"\A\d{1,2}\.\ds\Z")


@pytest.fixture(autouse=True, name="no_client_environment")
def fx_no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read GATEWAY_URL and GATEWAY_OPS_TOKEN; the developer's own must not leak in."""
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    monkeypatch.delenv("GATEWAY_OPS_TOKEN", raising=False)


async def gateway_command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def create(gateway: Gateway, event_id: str, slots: list[str], **extra: Any) -> dict[str, Any]:
    response = await gateway.hold(event_id, slots, **extra)
    assert response.status_code == 201, response.text
    hold: dict[str, Any] = response.json()
    return hold


def table_rows(out: str) -> list[list[str]]:
    """The body of the holds table: the lines between the dashes under the headers and the footer."""
    lines = out.rstrip("\n").split("\n")
    assert lines[1].startswith("-" * 22), out
    return [re.split(r" {2,}", line.strip()) for line in lines[2:-1]]


def two_columns(out: str) -> dict[str, str]:
    """`label  value` lines as a dict; labels are unique across the stats tables."""
    pairs = [re.split(r" {2,}", line, maxsplit=1) for line in out.splitlines() if "  " in line]
    labels = [pair[0] for pair in pairs if not pair[0].startswith("-")]
    assert len(labels) == len(set(labels)), labels
    return {pair[0]: pair[1].strip() for pair in pairs if len(pair) == 2 and not pair[0].startswith("-")}


def local_clock(timestamp: str) -> str:
    return datetime.fromisoformat(timestamp).astimezone().strftime("%H:%M:%S")


async def test_holds_lists_active_holds_by_expiry_and_filters_by_event(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    later = await create(gateway, "show-1", ["A-1", "A-2"], ttl_seconds=300)
    sooner = await create(gateway, "show-1", ["B-1"], holder="bob", ttl_seconds=30)
    elsewhere = await create(gateway, "show-2", ["C-1"], ttl_seconds=600)

    code, out, err = await gateway_command(capsys, "holds", "--url", gateway.url, "--event", "show-1")

    assert (code, err) == (0, "")
    assert out.split("\n")[0].split() == ["hold", "event", "slots", "holder", "status", "ttl", "expires"]
    rows = table_rows(out)
    assert [row[:5] for row in rows] == [
        [sooner["id"], "show-1", "B-1", "bob", "held"],
        [later["id"], "show-1", "A-1,A-2", "alice", "held"],
    ]
    assert re.fullmatch(r"(29|30)\.\ds", rows[0][5]), rows[0]
    assert re.fullmatch(r"4m 5\ds|5m 00s", rows[1][5]), rows[1]
    assert [row[6] for row in rows] == [local_clock(sooner["expires_at"]), local_clock(later["expires_at"])]
    assert out.endswith("\n2 holds\n")
    assert elsewhere["id"] not in out

    code, out, _ = await gateway_command(capsys, "holds", "--url", gateway.url)
    assert code == 0
    assert [row[0] for row in table_rows(out)] == [sooner["id"], later["id"], elsewhere["id"]]


@pytest.mark.parametrize(
    ("expiring", "expected"), [("90", ["soon"]), ("1m", ["soon"]), ("15m", ["soon", "late"])]
)
async def test_expiring_keeps_holds_that_expire_within_the_duration(
    gateway: Gateway, capsys: pytest.CaptureFixture[str], expiring: str, expected: list[str]
) -> None:
    holds = {
        "soon": await create(gateway, "show-1", ["A-1"], ttl_seconds=30),
        "late": await create(gateway, "show-1", ["A-2"], ttl_seconds=600),
    }

    code, out, _ = await gateway_command(capsys, "holds", "--url", gateway.url, "--expiring", expiring)

    assert code == 0
    assert [row[0] for row in table_rows(out)] == [holds[name]["id"] for name in expected]


async def test_limit_follows_cursors_and_says_when_more_are_left(
    gateway: Gateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    created = [await create(gateway, "show-1", [f"A-{i}"], ttl_seconds=60 + i) for i in range(5)]
    monkeypatch.setattr(ops_cli, "MAX_PAGE", 2)  # five holds take three pages

    code, out, _ = await gateway_command(capsys, "holds", "--url", gateway.url, "--limit", "5")
    assert code == 0
    assert [row[0] for row in table_rows(out)] == [hold["id"] for hold in created]
    assert out.endswith("\n5 holds\n")

    code, out, _ = await gateway_command(capsys, "holds", "--url", gateway.url, "--limit", "3")
    assert code == 0
    assert [row[0] for row in table_rows(out)] == [hold["id"] for hold in created[:3]]
    assert out.endswith("\n3 holds, more… (raise --limit)\n")


async def test_json_is_the_apis_answer(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    hold = await create(gateway, "show-1", ["A-1", "A-2"])
    confirmed = await gateway.post(f"/v1/holds/{hold['id']}/confirm", {"holder": "alice"})
    assert confirmed.status_code == 200
    await create(gateway, "show-1", ["B-1"])

    # A confirmed hold has no TTL, so nothing in the answer moves between the two reads.
    code, out, _ = await gateway_command(
        capsys, "holds", "--url", gateway.url, "--status", "confirmed", "--json"
    )
    api = await gateway.client.get("/v1/holds", params={"status": "confirmed"})

    assert code == 0
    assert json.loads(out) == api.json()
    assert [listed["id"] for listed in json.loads(out)["holds"]] == [hold["id"]]

    code, out, _ = await gateway_command(capsys, "slot", "show-1", "A-2", "--url", gateway.url, "--json")
    assert json.loads(out) == (await gateway.client.get("/v1/events/show-1/slots/A-2")).json()


async def test_slot_shows_held_and_free(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    hold = await create(gateway, "show-1", ["A-1"], ttl_seconds=20)

    code, out, _ = await gateway_command(capsys, "slot", "show-1", "A-1", "--url", gateway.url)
    assert code == 0
    held = two_columns(out)
    assert _TTL_UNDER_A_MINUTE.match(held.pop("ttl")), out
    assert held == {
        "event": "show-1",
        "slot": "A-1",
        "state": "held",
        "expires": local_clock(hold["expires_at"]),
    }

    code, out, _ = await gateway_command(capsys, "slot", "show-1", "Z-9", "--url", gateway.url)
    assert code == 0
    assert two_columns(out) == {
        "event": "show-1",
        "slot": "Z-9",
        "state": "free",
        "ttl": "—",
        "expires": "—",
    }


async def test_stats_shows_mode_counts_and_agreement(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await create(gateway, "show-1", ["A-1", "A-2"])
    assert (await gateway.post(f"/v1/holds/{first['id']}/confirm", {"holder": "alice"})).status_code == 200
    await create(gateway, "show-1", ["B-1"], ttl_seconds=5)
    await create(gateway, "show-2", ["C-1"])

    code, out, _ = await gateway_command(capsys, "stats", "--url", gateway.url, "--event", "show-1")
    counters = (await gateway.client.get("/v1/stats")).json()["counters"]

    assert code == 0
    shown = two_columns(out)
    assert {label: shown[label] for label in ("event", "mode")} == {"event": "show-1", "mode": "redis-front"}
    assert "mode reason" not in shown
    assert {label: shown[label] for label in ("active", "confirmed", "confirmed slots")} == {
        "active": "1",
        "confirmed": "1",
        "confirmed slots": "2",
    }
    assert shown["expiring within 10s"] == "1"
    assert {label: shown[label] for label in ("checked slots", "leased", "missing", "other token")} == {
        "checked slots": "3",
        "leased": "3",
        "missing": "0",
        "other token": "0",
    }
    # The counters are the process's own (other tests ran in it too): they equal the API's, read right after.
    assert {label: shown[label] for label in ("holds created", "holds confirmed")} == {
        "holds created": str(counters["holds_created"]),
        "holds confirmed": str(counters["holds_confirmed"]),
    }


async def test_stats_of_a_gateway_without_redis_says_why(
    db_only_gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await gateway_command(capsys, "stats", "--url", db_only_gateway.url)
    reason = (await db_only_gateway.client.get("/v1/stats")).json()["mode_reason"]

    assert code == 0
    shown = two_columns(out)
    assert (shown["event"], shown["mode"], shown["mode reason"]) == ("all events", "db-only", reason)
    assert shown["not checked"] == "no Redis in use"


async def test_ops_token_is_required_and_sent(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(database_url, redis_url, key_prefix, ops_token=TOKEN)
    async with running_gateway(settings) as gateway:
        hold = await create(gateway, "show-1", ["A-1"])

        code, out, err = await gateway_command(capsys, "holds", "--url", gateway.url)
        assert (code, out) == (1, "")
        assert err == (
            "gateway: 401 Unauthorized: This route needs the operations token: "
            "`Authorization: Bearer <GATEWAY_OPS_TOKEN>`. (pass --token or set GATEWAY_OPS_TOKEN)\n"
        )

        code, _, err = await gateway_command(capsys, "holds", "--url", gateway.url, "--token", "x" * 24)
        assert (code, err.startswith("gateway: 401 Unauthorized: ")) == (1, True)

        code, out, err = await gateway_command(capsys, "holds", "--url", gateway.url, "--token", TOKEN)
        assert (code, err) == (0, "")
        assert [row[0] for row in table_rows(out)] == [hold["id"]]

        # From the environment, as on the gateway's own host; GATEWAY_URL too, and a stray GATEWAY_*
        # variable that `serve` would reject does not matter: these commands never read the settings.
        monkeypatch.setenv("GATEWAY_OPS_TOKEN", TOKEN)
        monkeypatch.setenv("GATEWAY_URL", gateway.url)
        monkeypatch.setenv("GATEWAY_NOT_A_SETTING", "1")
        code, out, err = await gateway_command(capsys, "stats")
        assert (code, err) == (0, "")
        assert two_columns(out)["active"] == "1"


async def test_unreachable_gateway_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    code, out, err = await gateway_command(capsys, "holds", "--url", url)

    assert (code, out) == (1, "")
    assert re.fullmatch(rf"gateway: cannot reach {url}: \[Errno \d+\] Connection refused\n", err), err


async def test_watch_keeps_asking_an_unreachable_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    code, _, err = await gateway_command(capsys, "stats", "--url", url, "--watch", "0.01", "--count", "3")

    assert code == 1
    assert re.fullmatch(rf"(gateway: cannot reach {url}: \[Errno \d+\] Connection refused\n){{3}}", err), err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", "'5x' is not a duration: use e.g. 90, 90s, 5m or 1h"),
        ("1.5m", "'1.5m' is not a duration: use e.g. 90, 90s, 5m or 1h"),
        ("0", "'0' is out of range: 1s to 24h"),
        ("25h", "'25h' is out of range: 1s to 24h"),
    ],
)
def test_bad_expiring_is_an_argparse_error(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["holds", "--expiring", value])

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(f"gateway holds: error: argument --expiring: {message}\n")


async def test_watch_prints_frames_a_blank_line_apart(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    hold = await create(gateway, "show-1", ["A-1"])

    code, out, _ = await gateway_command(
        capsys, "holds", "--url", gateway.url, "--watch", "0.05", "--count", "2"
    )

    assert code == 0
    frames = out.rstrip("\n").split("\n\n")
    assert len(frames) == 2
    for frame in frames:
        header, table = frame.split("\n", 1)
        assert re.fullmatch(rf"holds · {gateway.url} · \d\d:\d\d:\d\d · every 0.05s \(Ctrl-C stops\)", header)
        assert [row[0] for row in table_rows(table + "\n")] == [hold["id"]]
    assert ops_cli.CLEAR_SCREEN not in out


async def test_watch_clears_a_terminal_and_streams_json_lines(
    gateway: Gateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await create(gateway, "show-1", ["A-1"])
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    code, out, _ = await gateway_command(
        capsys, "stats", "--url", gateway.url, "--watch", "0.05", "--count", "2"
    )
    assert code == 0
    assert out.count(ops_cli.CLEAR_SCREEN) == 2
    assert out.startswith(ops_cli.CLEAR_SCREEN)

    code, out, _ = await gateway_command(
        capsys, "stats", "--url", gateway.url, "--watch", "0.05", "--count", "2", "--json"
    )
    assert code == 0
    frames = [json.loads(line) for line in out.splitlines()]
    assert [(frame["mode"], frame["holds"]["active"]) for frame in frames] == [("redis-front", 1)] * 2


async def test_ctrl_c_ends_watch_with_exit_0_and_no_traceback(gateway: Gateway) -> None:
    hold = await create(gateway, "show-1", ["A-1"])
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway.cli", "holds", "--url", gateway.url, "--watch", "0.1"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first_frame = [await process.stdout.readline() for _ in range(5)]  # header, 2 heading lines, row, footer

    process.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(process.wait(), timeout=10)

    assert hold["id"].encode() in first_frame[3]
    assert first_frame[4] == b"1 hold\n"
    assert (code, await process.stderr.read()) == (0, b"")


async def test_events_prints_the_feed_a_line_per_event_and_the_next_cursor(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await create(gateway, "show-1", ["A-1", "A-2"], holder="alice")
    second = await create(gateway, "show-1", ["A-3"], holder="bob")
    assert (await gateway.post(f"/v1/holds/{first['id']}/confirm", {"holder": "alice"})).status_code == 200
    await wait_for_feed(gateway, 3)

    code, out, _ = await gateway_command(capsys, "events", "--url", gateway.url)
    limited = await gateway_command(capsys, "events", "--url", gateway.url, "--limit", "1")
    as_json = await gateway_command(capsys, "events", "--url", gateway.url, "--json", "--after", "1")

    lines = out.splitlines()
    assert code == 0
    assert [line.split()[2] for line in lines[:3]] == ["hold.created", "hold.created", "hold.confirmed"]
    assert [line.split()[3] for line in lines[:3]] == [first["id"], second["id"], first["id"]]
    assert "A-1,A-2" in lines[0]
    assert "alice" in lines[0]
    assert lines[3] == "3 events; next: gateway events --after 3"
    assert limited[1].splitlines()[-1] == "1 event; next: gateway events --after 1"
    assert [json.loads(line)["id"] for line in as_json[1].splitlines()] == [2, 3]


async def test_events_follow_prints_new_events_as_they_happen_until_ctrl_c(gateway: Gateway) -> None:
    await create(gateway, "show-1", ["A-1"])  # before the command starts: --follow begins at the latest
    await wait_for_feed(gateway, 1)
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway.cli", "events", "--url", gateway.url, "--follow"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    # The command's first long poll may start after the next hold: hold until a line comes, each a new hold.
    made: list[str] = []
    line = b""
    deadline = time.monotonic() + 30
    while not line:
        made.append((await create(gateway, "show-1", [f"B-{len(made)}"]))["id"])
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=1)
        except TimeoutError:
            assert time.monotonic() < deadline, "events --follow printed nothing"

    process.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(process.wait(), timeout=10)

    assert line.split()[2] == b"hold.created"
    assert line.split()[3].decode() in made  # a hold made after the command started, none before
    assert (code, await process.stderr.read()) == (0, b"")


async def wait_for_feed(gateway: Gateway, count: int) -> None:
    """Until the feed has numbered `count` events."""
    deadline = time.monotonic() + 30
    while len((await gateway.client.get("/v1/hold-events")).json()["events"]) < count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def test_count_without_watch_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--count", "2"]) == 2
    assert capsys.readouterr().err == "gateway: --count needs --watch\n"


@pytest.mark.parametrize(
    ("ttl_ms", "text"),
    [
        (None, "—"),
        (0, "0.0s"),
        (9_349, "9.3s"),
        (59_999, "59.9s"),
        (60_000, "1m 00s"),
        (252_000, "4m 12s"),
        (3_599_999, "59m 59s"),
        (3_900_000, "1h 05m"),
    ],
)
def test_human_ttl(ttl_ms: int | None, text: str) -> None:
    assert ops_cli.human_ttl(ttl_ms) == text


@pytest.mark.parametrize(
    ("slots", "text"),
    [
        (["A-1", "A-2"], "A-1,A-2"),
        ([f"B-{i}" for i in range(1, 11)], "B-1,B-2,B-3,B-4,B-5,B-6,… +4"),
        (["x" * 40, "y"], "… +2"),
    ],
)
def test_long_slot_lists_are_cut_at_a_slot(slots: list[str], text: str) -> None:
    assert ops_cli.slots_text(slots) == text
    assert len(text) <= ops_cli.SLOTS_WIDTH


def test_gateway_url_is_not_a_server_setting() -> None:
    """Regression: `serve` refused to start when an operator had GATEWAY_URL set for these commands."""
    assert settings_from_env({"GATEWAY_URL": "http://gw:8000"}) == settings_from_env({})


def test_ops_cli_does_not_load_the_web_stack() -> None:
    code = (
        "import sys, gateway.ops_cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'litestar', 'prometheus_client', 'uvicorn'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"


def test_token_help_reads_as_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: `--token`'s help read "default: $GATEWAY_OPS_TOKEN, better: a flag shows in ps"."""
    with pytest.raises(SystemExit) as exit_info:
        main(["holds", "--help"])

    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert (
        "--token TOKEN ops token (default: $GATEWAY_OPS_TOKEN, which is safer: a flag's value shows in ps)"
        in help_text
    )


async def put_inventory(gateway: Gateway, event_id: str, body: dict[str, Any]) -> None:
    response = await gateway.client.put(f"/v1/events/{event_id}/inventory", json=body)
    assert response.status_code == 200, response.text


async def create_items(gateway: Gateway, holder: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    response = await gateway.post("/v1/holds", {"holder": holder, "items": items, "ttl_seconds": 300})
    assert response.status_code == 201, response.text
    hold: dict[str, Any] = response.json()
    return hold


async def availability_json(
    capsys: pytest.CaptureFixture[str], url: str, event_id: str, condition: Any, within_s: float = 10
) -> dict[str, Any]:
    """`gateway availability EVENT --json`, asked again until it meets `condition`: the gateway answers from
    a read up to 0.9 s old."""
    deadline = time.monotonic() + within_s
    while True:
        code, out, err = await gateway_command(capsys, "availability", event_id, "--url", url, "--json")
        assert (code, err) == (0, "")
        answer: dict[str, Any] = json.loads(out)
        if condition(answer):
            return answer
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.05)


def tables(out: str) -> list[list[list[str]]]:
    """Each blank-line-separated table of the output as rows of cells (two spaces or more apart); the lines
    of dashes under the headers are left out."""
    return [
        [re.split(r" {2,}", line.strip()) for line in block.splitlines() if not line.startswith("--")]
        for block in out.strip("\n").split("\n\n")
    ]


async def test_availability_shows_seats_and_each_pool(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    await put_inventory(
        gateway,
        "gig",
        {
            "seats": ["A-1", "A-2", "A-3", "A-4"],
            "pools": [{"pool_id": "floor", "capacity": 10}, {"pool_id": "vip", "capacity": 2}],
            "limits": {"per_holder": 6},
        },
    )
    assert (await gateway.client.post("/v1/events/gig/seats/block", json={"seats": ["A-4"]})).is_success
    floor = {"event_id": "gig", "pool_id": "floor"}
    held = await create_items(
        gateway, "alice", [{"event_id": "gig", "slots": ["A-1"]}, {**floor, "quantity": 3}]
    )
    confirmed = await create_items(
        gateway, "bob", [{"event_id": "gig", "slots": ["A-2"]}, {**floor, "quantity": 2}]
    )
    assert (await gateway.post(f"/v1/holds/{confirmed['id']}/confirm", {"holder": "bob"})).status_code == 200

    answer = await availability_json(capsys, gateway.url, "gig", lambda a: a["seats"]["confirmed"] == 1)
    api = (await gateway.client.get("/v1/events/gig/availability")).json()
    # The same answer as the API's, but for when it was read (another read may have come in between).
    assert {**answer, "as_of": None} == {**api, "as_of": None}

    code, out, err = await gateway_command(capsys, "availability", "gig", "--url", gateway.url)

    assert (code, err) == (0, "")
    summary, seats, pools = tables(out)
    assert summary[1:] == [
        ["event", "gig"],
        ["as of", summary[2][1]],
        ["limit per holder", "6"],
        ["limit per hold", "none"],
    ]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", summary[2][1])
    assert seats[1:] == [["total", "4"], ["free", "1"], ["held", "1"], ["confirmed", "1"], ["blocked", "1"]]
    assert pools[0] == ["pool", "capacity", "available", "held", "confirmed", "next release"]
    floor_row, vip_row = pools[1:]
    assert floor_row[:5] == ["floor", "10", "5", "3", "2"]
    assert re.fullmatch(rf"{local_clock(held['expires_at'])} \(in (4m 5\ds|5m 00s)\)", floor_row[5]), (
        floor_row
    )
    assert vip_row == ["vip", "2", "2", "0", "0", "—"]


async def test_availability_of_an_open_event_is_its_404(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    await create(gateway, "open-show", ["A-1"])

    code, out, err = await gateway_command(capsys, "availability", "open-show", "--url", gateway.url)

    assert (code, out) == (1, "")
    assert err == "gateway: 404 Inventory not found: The event has no inventory.\n"


async def test_block_and_unblock_seats(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    await put_inventory(gateway, "hall", {"seats": ["A-1", "A-2", "A-3"]})
    await create(gateway, "hall", ["A-3"])

    code, out, err = await gateway_command(
        capsys, "block", "hall", "A-1", "A-2", "--reason", "broken rail", "--url", gateway.url
    )
    assert (code, err) == (0, "")
    assert two_columns(out) == {"event": "hall", "changed": "2", "blocked total": "2"}
    inventory = (await gateway.client.get("/v1/events/hall/inventory")).json()
    assert [(seat["seat_id"], seat["reason"]) for seat in inventory["blocked"]] == [
        ("A-1", "broken rail"),
        ("A-2", "broken rail"),
    ]
    assert (await gateway.hold("hall", ["A-1"], holder="bob")).status_code == 409

    # Refusals are the gateway's problem detail on one line, exit 1, and change nothing.
    code, out, err = await gateway_command(capsys, "block", "hall", "A-3", "--url", gateway.url)
    assert (code, out) == (1, "")
    assert err == "gateway: 409 Inventory in use: 1 of the seats are held or confirmed: A-3\n"
    code, out, err = await gateway_command(capsys, "unblock", "hall", "A-1", "Z-9", "--url", gateway.url)
    assert (code, out) == (1, "")
    assert err == "gateway: 422 Invalid request: `seats` has 1 seats outside the inventory: Z-9\n"
    code, out, err = await gateway_command(capsys, "block", "no-inventory", "A-1", "--url", gateway.url)
    assert (code, out) == (1, "")
    assert err == "gateway: 404 Inventory not found: The event has no inventory.\n"

    code, out, err = await gateway_command(capsys, "unblock", "hall", "A-1", "--url", gateway.url, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"event_id": "hall", "changed": 1, "blocked_total": 1}
    code, out, _ = await gateway_command(capsys, "unblock", "hall", "A-1", "--url", gateway.url)
    assert two_columns(out) == {"event": "hall", "changed": "0", "blocked total": "1"}
    assert (await gateway.hold("hall", ["A-1"], holder="bob")).status_code == 201
    assert (await gateway.hold("hall", ["A-2"], holder="bob")).status_code == 409


async def test_inventory_is_set_from_a_file_and_shown(
    gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    definition = tmp_path / "gig.json"
    definition.write_text(
        json.dumps(
            {
                "seats": ["A-1", "A-2", "A-3"],
                "pools": [{"pool_id": "floor", "capacity": 500}],
                "limits": {"per_hold": 4},
            }
        )
    )

    code, out, err = await gateway_command(
        capsys, "inventory", "gig", "--set", str(definition), "--url", gateway.url
    )
    assert (code, err) == (0, "")
    summary, pools = tables(out)
    assert summary[1:] == [
        ["event", "gig"],
        ["seats total", "3"],
        ["limit per holder", "none"],
        ["limit per hold", "4"],
    ]
    assert pools == [["pool", "capacity"], ["floor", "500"]]

    assert (
        await gateway.client.post("/v1/events/gig/seats/block", json={"seats": ["A-2"], "reason": "desk"})
    ).is_success
    code, out, err = await gateway_command(capsys, "inventory", "gig", "--url", gateway.url)
    api = (await gateway.client.get("/v1/events/gig/inventory")).json()
    assert (code, err) == (0, "")
    summary, pools, blocked = tables(out)
    assert ["seats blocked", "1"] in summary
    assert blocked == [
        ["blocked seat", "reason", "since"],
        ["A-2", "desk", local_clock(api["blocked"][0]["blocked_at"])],
    ]
    code, out, _ = await gateway_command(capsys, "inventory", "gig", "--url", gateway.url, "--json")
    assert json.loads(out) == api

    # The gateway judges the file: its problem detail, exit 1, the inventory unchanged.
    definition.write_text('{"seats": ["A-1"],')
    code, out, err = await gateway_command(
        capsys, "inventory", "gig", "--set", str(definition), "--url", gateway.url
    )
    assert (code, out) == (1, "")
    assert err.startswith("gateway: 400 Malformed request: the body is not valid JSON")
    definition.write_text('{"pools": [{"pool_id": "floor", "capacity": -1}]}')
    code, out, err = await gateway_command(
        capsys, "inventory", "gig", "--set", str(definition), "--url", gateway.url
    )
    assert (code, out) == (1, "")
    assert err.startswith("gateway: 422 Invalid request: ")
    assert "capacity" in err
    assert (await gateway.client.get("/v1/events/gig/inventory")).json() == api
    code, out, err = await gateway_command(capsys, "inventory", "open-show", "--url", gateway.url)
    assert (code, out, err) == (1, "", "gateway: 404 Inventory not found: The event has no inventory.\n")


def test_an_unreadable_inventory_file_is_an_argparse_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["inventory", "gig", "--set", str(missing)])

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"gateway inventory: error: argument --set: cannot read {str(missing)!r}: No such file or directory\n"
    )


async def test_inventory_commands_need_the_ops_token_and_availability_does_not(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(database_url, redis_url, key_prefix, ops_token=TOKEN)
    async with running_gateway(settings) as gateway:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        put = await gateway.client.put("/v1/events/gig/inventory", json={"seats": ["A-1"]}, headers=auth)
        assert put.status_code == 200, put.text
        refused = "gateway: 401 Unauthorized: This route needs the operations token: "
        for command in (["block", "gig", "A-1"], ["unblock", "gig", "A-1"], ["inventory", "gig"]):
            code, out, err = await gateway_command(capsys, *command, "--url", gateway.url)
            assert (code, out) == (1, ""), command
            assert err.startswith(refused), err
            assert err.endswith(" (pass --token or set GATEWAY_OPS_TOKEN)\n")

        code, out, err = await gateway_command(capsys, "availability", "gig", "--url", gateway.url, "--json")
        assert (code, err) == (0, "")
        assert json.loads(out)["seats"]["total"] == 1

        monkeypatch.setenv("GATEWAY_OPS_TOKEN", TOKEN)
        monkeypatch.setenv("GATEWAY_URL", gateway.url)
        code, out, err = await gateway_command(capsys, "block", "gig", "A-1")
        assert (code, err) == (0, "")
        assert two_columns(out)["blocked total"] == "1"
