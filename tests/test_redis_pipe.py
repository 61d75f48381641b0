"""The pipelined Redis connection: replies reach the right callers, and faults fail fast and heal."""

import asyncio
import signal
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.embedded import LocalRedis
from gateway.redis_pipe import PipelinedRedis, run_id_of


def pipe_to(url: str, timeout_s: float = 10.0) -> PipelinedRedis:
    """A pipe whose budget no busy machine's event-loop lag reaches, unless a test is about the budget."""
    return PipelinedRedis(url, timeout_s=timeout_s, connect_timeout_s=1.0)


async def test_concurrent_calls_each_get_their_own_reply(own_redis: LocalRedis) -> None:
    """Which reply goes to which call, not how fast (500 calls in one flush once outlasted a 0.3 s budget
    under stress-ng)."""
    pipe = pipe_to(own_redis.url)
    try:
        await asyncio.gather(*(pipe.execute("SET", f"k{i}", f"v{i}") for i in range(500)))
        replies = await asyncio.gather(*(pipe.execute("GET", f"k{i}") for i in range(500)))
    finally:
        await pipe.close()
    assert replies == [f"v{i}".encode() for i in range(500)]


async def test_an_error_reply_fails_only_its_own_call(own_redis: LocalRedis) -> None:
    pipe = pipe_to(own_redis.url)
    try:
        await pipe.execute("SET", "text", "not a number")
        results = await asyncio.gather(
            pipe.execute("INCR", "counter"),
            pipe.execute("INCR", "text"),
            pipe.execute("EVALSHA", "0" * 40, 0),
            pipe.execute("INCR", "counter"),
            return_exceptions=True,
        )
    finally:
        await pipe.close()
    assert results[0] == 1
    assert isinstance(results[1], ResponseError)
    assert isinstance(results[2], ResponseError)
    assert str(results[2]).startswith("NOSCRIPT")
    assert results[3] == 2


async def test_a_frozen_redis_costs_one_timeout_then_the_connection_heals(own_redis: LocalRedis) -> None:
    pipe = pipe_to(own_redis.url, timeout_s=0.2)
    await pipe.execute("SET", "k", "before")
    own_redis.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        frozen = await asyncio.gather(*(pipe.execute("GET", "k") for _ in range(20)), return_exceptions=True)
        waited_s = time.monotonic() - started
    finally:
        own_redis.kill(signal.SIGCONT)
    try:
        after = await pipe.execute("GET", "k")
    finally:
        await pipe.close()

    assert all(isinstance(r, RedisTimeoutError) for r in frozen), frozen
    # All together, one budget: one timeout after another would take 20 budgets (4 s).
    assert waited_s < 0.2 * len(frozen) / 2
    # The late replies to the timed-out calls went with the closed connection: the new one answers in step.
    assert after == b"before"


async def test_a_slow_reply_within_its_own_budget_is_no_timeout(own_redis: LocalRedis) -> None:
    """One timer serves the connection, set for the oldest call's deadline: a call sent after an answered one
    keeps its own, later deadline (a timer that fired at the first call's would fail it halfway through)."""
    pipe = pipe_to(own_redis.url, timeout_s=3.0)
    try:
        await pipe.execute("PING")  # its deadline is the timer's, 3 s from now
        sent_at = time.monotonic()
        await asyncio.sleep(2.0)  # so that the timer fires while the next call is out
        # Redis answers after 1.5 s (a pop from an empty list, given up): past the first call's deadline,
        # within its own (2 s + 3 s).
        slow = await pipe.execute("BLPOP", "empty-list", "1.5")
        waited_s = time.monotonic() - sent_at
        after = await pipe.execute("PING")
    finally:
        await pipe.close()
    assert slow is None
    assert waited_s > 3.0  # the first call's deadline passed while it was out
    assert after == b"PONG"


async def test_a_killed_redis_fails_fast_and_a_restarted_one_is_used_again(own_redis: LocalRedis) -> None:
    pipe = pipe_to(own_redis.url)
    await pipe.execute("SET", "k", "v")
    own_redis.kill(signal.SIGKILL)
    try:
        with pytest.raises(RedisConnectionError):
            await pipe.execute("GET", "k")
        with pytest.raises(RedisConnectionError):
            await pipe.execute("GET", "k")  # nothing listens: refused at once, no timeout
        own_redis.start()  # same port, empty
        assert await pipe.execute("GET", "k") is None
        assert await pipe.execute("SET", "k", "again") == b"OK"
    finally:
        await pipe.close()


async def test_the_database_number_of_the_url_is_selected(own_redis: LocalRedis) -> None:
    pipe = pipe_to(own_redis.url.rsplit("/", 1)[0] + "/3")
    default = pipe_to(own_redis.url)
    try:
        await pipe.execute("SET", "where", "db3")
        assert await default.execute("GET", "where") is None
        assert await pipe.execute("GET", "where") == b"db3"
    finally:
        await pipe.close()
        await default.close()


async def test_each_new_connection_is_checked_before_any_call_is_sent_on_it(own_redis: LocalRedis) -> None:
    """A new connection first asks the server its run_id; refused, it carries no call, not even the ones
    queued while it opened (they fail), and the next connection is checked again."""
    seen: list[str] = []
    refuse = True

    def check(run_id: str) -> None:
        seen.append(run_id)
        if refuse:
            raise RedisConnectionError(f"not the instance expected: {run_id}")

    pipe = PipelinedRedis(own_redis.url, timeout_s=1.0, connect_timeout_s=1.0, check_instance=check)
    try:
        refused = await asyncio.gather(
            *(pipe.execute("SET", "k", f"v{i}") for i in range(5)), return_exceptions=True
        )
        refuse = False
        accepted = await pipe.execute("GET", "k")
    finally:
        await pipe.close()

    assert all(isinstance(r, RedisConnectionError) for r in refused), refused
    assert accepted is None  # none of the refused calls reached Redis
    assert len(seen) == 2
    assert len(set(seen)) == 1
    assert len(seen[0]) == 40  # Redis's run_id: 40 hex characters


def test_run_id_is_read_from_info_server() -> None:
    info = (
        b"# Server\r\nredis_version:7.0.15\r\n"
        b"run_id:0123456789abcdef0123456789abcdef01234567\r\ntcp_port:6379\r\n"
    )
    assert run_id_of(info) == "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(RedisConnectionError):
        run_id_of(b"# Server\r\nredis_version:7.0.15\r\n")
