"""The verdict on each target of the benchmark, and the measures derived from the raw runs."""

from collections.abc import Callable

from loadtests.bench.results import (
    BARE,
    DB_ONLY,
    NAIVE,
    REDIS_FRONT,
    REDIS_FRONT_WEBHOOKS,
    Bulkhead,
    Delivery,
    ExpiryDelivery,
    FlashSale,
    GaOnSale,
    OnSale,
    Report,
    Run,
    Verdict,
)

# "0 Postgres statements per rejection" as a number: a rejection that reached Postgres would cost at least
# one transaction, so a rate a hundred times lower can only be background work (the gateway's sweeper).
ZERO_TRANSACTIONS_BELOW = 0.01


def thousands(value: float) -> str:
    return f"{value:,.0f}"


def ms(us: float) -> str:
    """Microseconds as milliseconds, one decimal below 100 ms."""
    return f"{us / 1000:.1f}" if us < 100_000 else f"{us / 1000:,.0f}"


def pairs_per_s(run: Run) -> float:
    return run.wrk.count(200) / run.wrk.duration_s if run.wrk.duration_s else 0.0


def holds_per_s(run: Run) -> float:
    return run.wrk.count(201) / run.wrk.duration_s if run.wrk.duration_s else 0.0


def transactions_per_request(run: Run) -> float | None:
    count = transactions(run)
    return count / run.wrk.requests if count is not None and run.wrk.requests else None


def onsale_ok(onsale: OnSale) -> bool:
    return onsale.run.wrk.count(201) == onsale.seats and onsale.sold_in_database == onsale.seats


def ga_onsale_ok(sale: GaOnSale) -> bool:
    """Sold out exactly, by the 201s and by the holds listing, one listed hold per 201."""
    return (
        sale.units_granted == sale.capacity == sale.units_in_gateway
        and sale.holds_in_gateway == sale.run.wrk.count(201)
    )


def delivery_ok(delivery: Delivery) -> bool:
    """Every event arrived, and nothing the feed does not hold."""
    return delivery.received == delivery.events and delivery.unexpected == 0


def flash_sale_ok(sale: FlashSale) -> bool:
    """Every seat sold once, every confirm answered 200, every event the feed numbered at the receiver."""
    return (
        sale.run.wrk.count(201) == sale.seats
        and sale.confirmed == sale.confirms_sent
        and sale.delivery.events == sale.seats + sale.confirmed
        and delivery_ok(sale.delivery)
    )


def expiry_ok(expiry: ExpiryDelivery) -> bool:
    """A hold.expired numbered for every hold left to lapse, and every one at the receiver."""
    return expiry.delivery.events == expiry.holds and delivery_ok(expiry.delivery)


def webhooks_ok(report: Report) -> bool:
    """What fails the run in the webhooks section: an event that did not arrive (when measured)."""
    return (report.flash_sale is None or flash_sale_ok(report.flash_sale)) and (
        report.expiry is None or expiry_ok(report.expiry)
    )


def drain_rate_per_s(delivery: Delivery) -> float | None:
    """Events a second that arrived after the last event occurred, from then to the last receipt: the
    backlog's delivery rate once the load has stopped (None: no backlog)."""
    if delivery.last_occurred_unix_s is None or delivery.last_received_unix_s is None:
        return None
    span_s = delivery.last_received_unix_s - delivery.last_occurred_unix_s
    if delivery.received_after_last_event < 2 or span_s <= 0:
        return None
    return delivery.received_after_last_event / span_s


def overall_rate_per_s(delivery: Delivery) -> float | None:
    """Events a second from the first event to the last receipt."""
    if delivery.first_occurred_unix_s is None or delivery.last_received_unix_s is None:
        return None
    span_s = delivery.last_received_unix_s - delivery.first_occurred_unix_s
    return delivery.received / span_s if span_s > 0 else None


def last_event_to_last_receipt_s(delivery: Delivery) -> float | None:
    if delivery.last_occurred_unix_s is None or delivery.last_received_unix_s is None:
        return None
    return delivery.last_received_unix_s - delivery.last_occurred_unix_s


def rejections_per_s(run: Run) -> float:
    return run.wrk.count(409) / run.wrk.duration_s if run.wrk.duration_s else 0.0


def webhook_means(report: Report, rate: str) -> tuple[float | None, float | None]:
    """The mean over the rounds of a rate ("rejection": 409s a second, "commit": 201s a second), webhooks
    off and on."""

    def mean(target: str) -> float | None:
        rates = [
            rejections_per_s(r.rejection) if rate == "rejection" else holds_per_s(r.commit)
            for r in report.webhook_rounds
            if r.target == target
        ]
        return sum(rates) / len(rates) if rates else None

    return mean(REDIS_FRONT), mean(REDIS_FRONT_WEBHOOKS)


def webhook_ratio(report: Report, rate: str) -> float | None:
    off, on = webhook_means(report, rate)
    return on / off if on is not None and off else None


# --- verdicts ---------------------------------------------------------------------------------------------


def verdicts(report: Report) -> list[Verdict]:
    """The Targets table: each goal, what was measured, and whether it was met."""
    find = report.find
    a, b, c, d = (find(report.rejection, key) for key in (REDIS_FRONT, DB_ONLY, NAIVE, BARE))
    sales = {sale.target: sale for sale in report.onsale}
    commits = {run.target: run for run in report.commit}
    pairs = {run.target: run for run in report.hold_confirm}
    return [
        _versus("Rejection ≥ 100% of bare Litestar", a, d, at_least=1.0, percent=True, floor=0.70),
        _versus("Rejection ≥ 3x naive", a, c, at_least=3.0),
        _zero_transactions(a),
        _postgres_cpu(a, b),
        _versus(
            "On-sale throughput ≥ 1.3x db-only",
            sales[REDIS_FRONT].run if REDIS_FRONT in sales else None,
            sales[DB_ONLY].run if DB_ONLY in sales else None,
            at_least=1.3,
        ),
        _rejection_p99(a, report.scaling_concurrency),
        _bulkhead({item.target: item for item in report.bulkhead}),
        _rate_versus("Commit path, Redis front ≥ db-only", commits, holds_per_s, "holds/s"),
        _rate_versus("Hold + confirm, Redis front ≥ db-only", pairs, pairs_per_s, "pairs/s"),
    ]


def _not_measured(target: str) -> Verdict:
    return Verdict(target=target, measured="not measured", met=None)


def _versus(
    target: str,
    run: Run | None,
    other: Run | None,
    *,
    at_least: float,
    percent: bool = False,
    floor: float | None = None,
) -> Verdict:
    """`floor`: the share below which the goal is far off, shown beside a goal not met."""
    if run is None or other is None or not other.wrk.rps:
        return _not_measured(target)
    ratio = run.wrk.rps / other.wrk.rps
    shown = f"{ratio:.0%}" if percent else f"{ratio:.2f}x"
    below = ""
    if floor is not None and ratio < at_least:
        below = f"; the {floor:.0%} floor {'met' if ratio >= floor else 'missed'}"
    return Verdict(
        target=target,
        measured=f"{shown} ({thousands(run.wrk.rps)} vs {thousands(other.wrk.rps)} req/s{below})",
        met=ratio >= at_least,
    )


def _rate_versus(target: str, runs: dict[str, Run], rate: Callable[[Run], float], unit: str) -> Verdict:
    """Redis front's rate at least db-only's, in one run."""
    if REDIS_FRONT not in runs or DB_ONLY not in runs or not rate(runs[DB_ONLY]):
        return _not_measured(target)
    front, db_only = rate(runs[REDIS_FRONT]), rate(runs[DB_ONLY])
    wall = "" if front >= db_only else "; the wall: section 3, where a winner's CPU goes"
    return Verdict(
        target=target,
        measured=f"{front / db_only:.2f}x ({thousands(front)} vs {thousands(db_only)} {unit}{wall})",
        met=front >= db_only,
    )


def _zero_transactions(run: Run | None) -> Verdict:
    target = "0 Postgres statements per rejection (transactions per request)"
    per_request = transactions_per_request(run) if run else None
    if run is None or per_request is None:
        return _not_measured(target)
    count = transactions(run)
    return Verdict(
        target=target,
        measured=f"{per_request:.5f} ({count} transactions for {thousands(run.wrk.requests)} rejections; "
        f"met if < {ZERO_TRANSACTIONS_BELOW})",
        met=per_request < ZERO_TRANSACTIONS_BELOW,
    )


def _postgres_cpu(run: Run | None, db_only: Run | None) -> Verdict:
    target = "Postgres CPU ≤ 5% of db-only (rejection path)"
    if run is None or db_only is None or not db_only.cost.postgres_cpu_s:
        return _not_measured(target)
    share = run.cost.postgres_cpu_s / db_only.cost.postgres_cpu_s
    return Verdict(
        target=target,
        measured=f"{share:.1%} ({run.cost.postgres_cpu_s:.2f} s vs {db_only.cost.postgres_cpu_s:.2f} s)",
        met=share <= 0.05,
    )


def _rejection_p99(run: Run | None, scaling: list[Run]) -> Verdict:
    if run is None:
        return _not_measured("Rejection p99 < 20 ms at 64 clients")
    others = ", ".join(
        f"{other.wrk.connections}: {ms(other.wrk.latency.p99_us)} ms"
        for other in scaling
        if other.target == run.target and other.wrk.connections != run.wrk.connections
    )
    p99_ms = run.wrk.latency.p99_us / 1000
    return Verdict(
        target=f"Rejection p99 < 20 ms at {run.wrk.connections} clients",
        measured=f"{p99_ms:.1f} ms" + (f" (at {others})" if others else ""),
        met=p99_ms < 20,
    )


def _bulkhead(bulkheads: dict[str, Bulkhead]) -> Verdict:
    target = "Bulkhead: confirm p99 during the storm ≤ 2x quiet"
    if REDIS_FRONT not in bulkheads:
        return _not_measured(target)
    item = bulkheads[REDIS_FRONT]
    others = ", ".join(
        f"{key}: {storm_ratio(bulkheads[key]):.1f}x" for key in (DB_ONLY, NAIVE) if key in bulkheads
    )
    return Verdict(
        target=target,
        measured=f"{storm_ratio(item):.1f}x ({item.quiet.p99_ms:.1f} → {item.storm.p99_ms:.1f} ms)"
        + (f"; {others}" if others else ""),
        met=storm_ratio(item) <= 2,
    )


def storm_ratio(item: Bulkhead) -> float:
    return item.storm.p99_ms / item.quiet.p99_ms if item.quiet.p99_ms else float("inf")


def transactions(run: Run) -> int | None:
    """Postgres transactions in the target's database over the run, once flushed."""
    if run.transactions is None or run.transactions_before_run is None:
        return None
    return run.transactions.transactions - run.transactions_before_run


# The hot paths with webhooks on must keep this share of their rate with webhooks off.
WEBHOOK_RATIO_AT_LEAST = 0.90
# The contract: a hold.expired reaches a healthy receiver within this long of the hold's expires_at.
EXPIRED_WITHIN_S = 3.0


def webhook_verdicts(report: Report) -> list[Verdict]:
    """The webhooks section's own targets."""
    rows = []
    for rate, what in (("rejection", "Rejection rate"), ("commit", "Commit rate")):
        target = f"{what}, webhooks on ÷ off ≥ {WEBHOOK_RATIO_AT_LEAST:.2f}"
        off, on = webhook_means(report, rate)
        ratio = webhook_ratio(report, rate)
        if ratio is None or off is None or on is None:
            rows.append(_not_measured(target))
            continue
        rounds = sum(1 for r in report.webhook_rounds if r.target == REDIS_FRONT)
        rows.append(
            Verdict(
                target=target,
                measured=f"{ratio:.2f} ({thousands(on)} vs {thousands(off)} a second, means of {rounds} "
                "round(s) each)",
                met=ratio >= WEBHOOK_RATIO_AT_LEAST,
            )
        )
    sale = report.flash_sale
    target = "Flash sale with webhooks on: every event delivered"
    if sale is None:
        rows.append(_not_measured(target))
    else:
        rows.append(
            Verdict(
                target=target,
                measured=f"{sale.delivery.received:,} of {sale.delivery.events:,} events "
                f"({sale.run.wrk.count(201):,} holds of {sale.seats:,} seats, {sale.confirmed:,} confirmed)",
                met=flash_sale_ok(sale),
            )
        )
    expiry = report.expiry
    target = f"hold.expired delivered within {EXPIRED_WITHIN_S:g} s of expires_at (max)"
    if expiry is None or expiry.after_expires is None:
        rows.append(_not_measured(target))
    else:
        after = expiry.after_expires
        rows.append(
            Verdict(
                target=target,
                measured=f"max {after.max_s:.2f} s, p99 {after.p99_s:.2f} s ({expiry.delivery.received} of "
                f"{expiry.holds} holds)",
                met=expiry_ok(expiry) and after.max_s <= EXPIRED_WITHIN_S,
            )
        )
    return rows
