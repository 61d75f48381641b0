"""The verdict on each target of the benchmark, and the measures derived from the raw runs."""

from loadtests.bench.results import (
    BARE,
    DB_ONLY,
    NAIVE,
    REDIS_FRONT,
    Bulkhead,
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


# --- verdicts ---------------------------------------------------------------------------------------------


def verdicts(report: Report) -> list[Verdict]:
    """The Targets table: each goal, what was measured, and whether it was met."""
    find = report.find
    a, b, c, d = (find(report.rejection, key) for key in (REDIS_FRONT, DB_ONLY, NAIVE, BARE))
    sales = {sale.target: sale for sale in report.onsale}
    return [
        _versus("Rejection ≥ 70% of bare Litestar", a, d, at_least=0.70, percent=True),
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
    ]


def _not_measured(target: str) -> Verdict:
    return Verdict(target=target, measured="not measured", met=None)


def _versus(
    target: str, run: Run | None, other: Run | None, *, at_least: float, percent: bool = False
) -> Verdict:
    if run is None or other is None or not other.wrk.rps:
        return _not_measured(target)
    ratio = run.wrk.rps / other.wrk.rps
    shown = f"{ratio:.0%}" if percent else f"{ratio:.2f}x"
    return Verdict(
        target=target,
        measured=f"{shown} ({thousands(run.wrk.rps)} vs {thousands(other.wrk.rps)} req/s)",
        met=ratio >= at_least,
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
