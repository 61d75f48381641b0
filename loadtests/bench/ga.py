"""General admission (pools) in the benchmark: a rejection storm on a sold-out pool, the on-sale of one pool,
and a storm of availability reads. Each block starts its target on a database of its own and sets its event
up through the inventory API (PUT /v1/events/{e}/inventory), then measures with wrk as the seat blocks do."""

from datetime import datetime
from urllib.parse import urlencode

import msgspec

from loadtests.bench.client import Connection
from loadtests.bench.results import REDIS_FRONT, GaOnSale, Run
from loadtests.bench.scenarios import HOLD_TTL_S, Bench, Target
from loadtests.bench.stack import BenchError

POOL = "ga"  # the pool of every general-admission event of the benchmark
STORM_EVENT = "ga-storm"
STORM_CAPACITY = 4  # sold out by one hold before the storm
ONSALE_EVENT = "ga-onsale"
READS_EVENT = "ga-reads"
# What the availability reads show: two pools and seats, each with held and confirmed units.
READS_POOLS = {POOL: 1000, "vip": 100}
READS_SEATS = [f"A-{n}" for n in range(1, 101)]
# Quantities are 1 to 4 and every hold has a holder of its own: limits that never refuse one.
LIMITS = {"per_holder": 4, "per_hold": 4}
LIVE = ("held", "confirmed")
LISTING_PAGE = 1000  # GET /v1/holds' largest page


class _Item(msgspec.Struct):
    event_id: str
    pool_id: str | None = None  # None: a seat item
    quantity: int = 0


class _Hold(msgspec.Struct):
    id: str
    status: str
    created_at: datetime
    items: list[_Item] = msgspec.field(default_factory=list)


class _HoldPage(msgspec.Struct):
    holds: list[_Hold]
    next_cursor: str | None = None


class GeneralAdmission:
    """The blocks, each a step of the benchmark (see __main__)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    async def pool_storm(self, key: str) -> None:
        """Hold requests for one unit of a sold-out pool, as the seat storm asks for a held seat: the same
        connections, duration and warm-up. Postgres transactions counted with Redis in front, as there."""
        bench, plan = self.bench, self.bench.plan
        async with bench.target(key) as target:
            await put_inventory(target, STORM_EVENT, pools={POOL: STORM_CAPACITY})
            await hold(
                target, "owner", [{"event_id": STORM_EVENT, "pool_id": POOL, "quantity": STORM_CAPACITY}]
            )
            counted = key == REDIS_FRONT
            bench.say(f"{key}: sold-out pool storm" + (" (Postgres transactions counted)" if counted else ""))
            args = [STORM_EVENT, POOL]
            run = await bench.measure(
                target,
                "reject_pool.lua",
                args,
                connections=plan.storm_connections,
                duration_s=plan.run_s,
                warmup=("reject_pool.lua", args),
                count_transactions=counted,
            )
            if not counted:
                bench.report.pool_rejection.append(run)
                return

            async def record(counted_run: Run) -> None:
                bench.report.pool_rejection.append(counted_run)

            bench.count_after_stop(target, run, record)

    async def onsale(self, key: str) -> None:
        """A fixed number of requests for 1 to 4 units of one pool of plan.ga_capacity units; how long until
        sold out, and the Postgres transactions, counted as in the seat on-sale."""
        bench, plan = self.bench, self.bench.plan
        async with bench.target(key) as target:
            await put_inventory(target, ONSALE_EVENT, pools={POOL: plan.ga_capacity})
            bench.say(f"{key}: GA on-sale, {plan.ga_requests} requests for {plan.ga_capacity} units")
            threads = min(plan.threads, plan.onsale_connections)
            run = await bench.measure(
                target,
                "ga_onsale.lua",
                [ONSALE_EVENT, POOL, str(plan.ga_requests), str(threads)],
                connections=plan.onsale_connections,
                duration_s=max(60, plan.ga_requests // 50),  # a ceiling: each thread stops after its share
                warmup=(
                    "invalid.lua",
                    [],
                ),  # reaches neither Redis nor Postgres: nothing leaks into the count
                count_transactions=True,
                until_threads_done=True,
            )

            async def record(counted: Run) -> None:
                # The listing is read once the transactions are counted, from the target started again.
                with target.server:
                    await target.server.wait_ready("/ready")
                    holds = await listed_holds(target, ONSALE_EVENT)
                units = sum(
                    i.quantity for h in holds for i in h.items if i.pool_id == POOL and h.status in LIVE
                )
                last = max((h.created_at for h in holds if h.status in LIVE), default=None)
                bench.report.ga_onsale.append(
                    GaOnSale(
                        target=key,
                        run=counted,
                        capacity=plan.ga_capacity,
                        units_granted=counted.wrk.counters.get("units", 0),
                        units_in_gateway=units,
                        holds_in_gateway=sum(1 for h in holds if h.status in LIVE),
                        sold_out_s=last.timestamp() - counted.started_at_unix_s if last else None,
                    )
                )

            bench.count_after_stop(target, run, record)

    async def availability(self, key: str) -> None:
        """GET availability of an event with pools and seats, some held and confirmed: reads per second, and
        the Postgres transactions behind them (the answer is cached for up to a second)."""
        bench, plan = self.bench, self.bench.plan
        async with bench.target(key) as target:
            await put_inventory(target, READS_EVENT, pools=READS_POOLS, seats=READS_SEATS)
            for n, item in enumerate(
                [
                    {"event_id": READS_EVENT, "pool_id": POOL, "quantity": 3},
                    {"event_id": READS_EVENT, "pool_id": "vip", "quantity": 2},
                    {"event_id": READS_EVENT, "slots": READS_SEATS[:2]},
                ]
            ):
                hold_id = await hold(target, f"reader-{n}", [item])
                if n % 2 == 0:
                    await confirm(target, hold_id, f"reader-{n}")
            bench.say(f"{key}: availability read storm (Postgres transactions counted)")
            run = await bench.measure(
                target,
                "availability.lua",
                [READS_EVENT],
                connections=plan.storm_connections,
                duration_s=plan.run_s,
                warmup=(
                    "invalid.lua",
                    [],
                ),  # reaches neither Redis nor Postgres: nothing leaks into the count
                count_transactions=True,
            )

            async def record(counted: Run) -> None:
                bench.report.availability.append(counted)

            bench.count_after_stop(target, run, record)


# --- the inventory API, as the blocks use it --------------------------------------------------------------


async def _request(target: Target, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    conn = await Connection.open(target.server.port)
    try:
        return await conn.request(method, path, body)
    finally:
        await conn.close()


async def put_inventory(
    target: Target, event_id: str, *, pools: dict[str, int], seats: list[str] | None = None
) -> None:
    body: dict[str, object] = {
        "pools": [{"pool_id": pool, "capacity": capacity} for pool, capacity in pools.items()],
        "limits": LIMITS,
    }
    if seats:
        body["seats"] = seats
    path = f"/v1/events/{event_id}/inventory"
    status, answer = await _request(target, "PUT", path, body)
    if status in (404, 405):
        raise BenchError(f"{target.key}: PUT {path} answered {status}: this gateway has no inventory API")
    if status != 200:
        raise BenchError(f"{target.key}: PUT {path} answered {status} {answer[:300]!r}")


async def hold(target: Target, holder: str, items: list[dict[str, object]]) -> str:
    """A hold on these items (201 expected); its id."""
    body = {"holder": holder, "ttl_seconds": HOLD_TTL_S, "items": items}
    status, answer = await _request(target, "POST", "/v1/holds", body)
    if status != 201:
        raise BenchError(f"{target.key}: holding {items} gave {status} {answer[:300]!r}")
    return msgspec.json.decode(answer, type=_Hold).id


async def confirm(target: Target, hold_id: str, holder: str) -> None:
    status, answer = await _request(target, "POST", f"/v1/holds/{hold_id}/confirm", {"holder": holder})
    if status != 200:
        raise BenchError(f"{target.key}: confirming {hold_id} gave {status} {answer[:300]!r}")


async def listed_holds(target: Target, event_id: str) -> list[_Hold]:
    """Every hold of the event, from the holds listing (the benchmark's gateways have no ops token)."""
    holds: list[_Hold] = []
    cursor: str | None = None
    while True:
        query = {"event_id": event_id, "limit": LISTING_PAGE} | ({"cursor": cursor} if cursor else {})
        status, answer = await _request(target, "GET", f"/v1/holds?{urlencode(query)}")
        if status != 200:
            raise BenchError(f"{target.key}: the holds listing answered {status} {answer[:300]!r}")
        page = msgspec.json.decode(answer, type=_HoldPage)
        holds += page.holds
        if not page.next_cursor:
            return holds
        cursor = page.next_cursor
