"""`gateway holds | slot | stats` against a real gateway. main() runs in a worker thread: the gateway serves
from this test's event loop, so a blocking client on the loop would wait for itself forever."""

import asyncio
import json
import re
import signal
import subprocess
import sys
from datetime import datetime
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
