"""The Markdown report of a Report."""

from collections.abc import Iterable

from loadtests.bench.ga import STORM_CAPACITY
from loadtests.bench.results import (
    BARE,
    DB_ONLY,
    NAIVE,
    POOLS,
    REDIS_FRONT,
    REDIS_FRONT_WEBHOOKS,
    SEATS,
    TARGET_NAMES,
    WEBHOOKS,
    Lag,
    Report,
    Run,
)
from loadtests.bench.verdicts import (
    EXPIRED_WITHIN_S,
    delivery_ok,
    drain_rate_per_s,
    expiry_ok,
    flash_sale_ok,
    ga_onsale_ok,
    holds_per_s,
    last_event_to_last_receipt_s,
    ms,
    onsale_ok,
    overall_rate_per_s,
    pairs_per_s,
    rejections_per_s,
    storm_ratio,
    thousands,
    transactions,
    transactions_per_request,
    verdicts,
    webhook_means,
    webhook_ratio,
    webhook_verdicts,
)

NOISY_CORES = 0.1  # other processes' CPU during a run, in cores, past which the report says it is skewed


# --- formatting ---------------------------------------------------------------------------------------------


def _ratio(numerator: float | None, denominator: float | None, unit: str = "x") -> str:
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}{unit}"


def _pct(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "n/a"
    return f"{100 * numerator / denominator:.1f}%"


def _table(headers: list[str], rows: Iterable[list[str]], align: str = "") -> list[str]:
    """A Markdown table; align: one letter per column, l or r (default: first l, the rest r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _wrk_cores(run: Run, cpus: int) -> str:
    return f"{run.wrk.cores_used:.2f} of {cpus}"


def _name(target: str) -> str:
    return TARGET_NAMES.get(target, target)


# --- the document -------------------------------------------------------------------------------------------


def markdown(report: Report) -> str:
    plan, machine, cpus = report.plan, report.machine, report.machine.cpus
    lines = [f"# Reservation gateway benchmark ({plan.name})", ""]
    if report.errors:
        lines += ["**FAILED: some measurements could not be made:**", ""]
        lines += [f"- FAILED: {error}" for error in report.errors] + [""]
    failed_sales = [sale for sale in report.onsale if not onsale_ok(sale)]
    for sale in failed_sales:
        lines += [
            f"**FAILED: on-sale on {_name(sale.target)} sold {sale.run.wrk.count(201)} seats by its 201s and "
            f"{sale.sold_in_database} in its database, not {sale.seats}.**",
            "",
        ]
    for ga_sale in (sale for sale in report.ga_onsale if not ga_onsale_ok(sale)):
        lines += [
            f"**FAILED: GA on-sale on {_name(ga_sale.target)} sold {ga_sale.units_granted} units by its 201s "
            f"({ga_sale.run.wrk.count(201)} holds) and {ga_sale.units_in_gateway} per the holds listing "
            f"({ga_sale.holds_in_gateway} holds), not {ga_sale.capacity}.**",
            "",
        ]
    if report.flash_sale is not None and not flash_sale_ok(report.flash_sale):
        sale = report.flash_sale
        lines += [
            f"**FAILED: the webhook flash sale made {sale.run.wrk.count(201):,} holds of {sale.seats:,} "
            f"seats and {sale.confirmed:,} confirms of {sale.confirms_sent:,}; {sale.delivery.received:,} "
            f"of its {sale.delivery.events:,} events arrived ({sale.delivery.unexpected} unexpected).**",
            "",
        ]
    if report.expiry is not None and not expiry_ok(report.expiry):
        expiry = report.expiry
        lines += [
            f"**FAILED: of {expiry.holds} holds left to lapse, {expiry.delivery.events} hold.expired were "
            f"numbered and {expiry.delivery.received} arrived at the webhook receiver.**",
            "",
        ]
    lines += [
        " ".join(
            [
                f"Every target runs {plan.workers} uvicorn worker(s) (uvloop, httptools) on its own",
                f"database, measured one at a time with wrk -t{plan.threads} on the same {cpus} cores.",
                f"Rejection runs last {plan.run_s} s ({plan.side_run_s} s with the access log off and at 1",
                f"worker); commit, hold + confirm and scaling runs {plan.short_run_s} s; each after a",
                f"{plan.warmup_s} s warm-up with the same script. Runs vary by about ±10% from one to the",
                f"next: compare within one report. Benchmark wall time: {report.duration_s:.0f} s.",
            ]
        ),
        "",
        "## Machine",
        "",
    ]
    load_after = " / ".join(f"{x:.2f}" for x in machine.load_after) if machine.load_after else "n/a"
    lines += _table(
        ["Machine", ""],
        [
            ["CPUs", f"{machine.cpus} ({machine.cpu_model})"],
            ["RAM", f"{machine.memory_gib:.1f} GiB"],
            ["Kernel", machine.kernel],
            ["Python", machine.python],
            ["PostgreSQL", f"{machine.postgres} (its own, fsync off)"],
            ["Redis", f"{machine.redis} (its own)"],
            ["wrk", machine.wrk],
            ["Date", machine.date],
            ["Commit", machine.commit + (" (dirty: uncommitted changes)" if machine.dirty else "")],
            ["Load average (1/5/15 min) before", " / ".join(f"{x:.2f}" for x in machine.load_before)],
            ["Load average after", load_after],
        ],
        align="ll",
    )
    lines += _noise(report)
    if SEATS in report.sections:
        lines += _seat_sections(report, cpus)
    if POOLS in report.sections:
        lines += _ga_section(report, cpus)
    if WEBHOOKS in report.sections:
        lines += _webhooks_section(report, cpus)
    lines += _method_notes()
    return "\n".join(lines).rstrip() + "\n"


def _seat_sections(report: Report, cpus: int) -> list[str]:
    """Targets, Ratios and sections 1-6: the seat paths."""
    find = report.find
    lines = ["## Targets", ""]
    marks = {True: "yes", False: "**no**", None: "n/a"}
    lines += _table(
        ["Target", "Measured", "Met?"],
        ([v.target, v.measured, marks[v.met]] for v in verdicts(report)),
        align="lll",
    )

    a, b, c, d = (find(report.rejection, key) for key in (REDIS_FRONT, DB_ONLY, NAIVE, BARE))
    sales = {sale.target: sale for sale in report.onsale}
    commits = {run.target: run for run in report.commit}
    confirms = {run.target: run for run in report.hold_confirm}

    def rps(run: Run | None) -> float | None:
        return run.wrk.rps if run else None

    def sale_rps(key: str) -> float | None:
        return sales[key].run.wrk.rps if key in sales else None

    def commit_rate(key: str) -> float | None:
        return holds_per_s(commits[key]) if key in commits else None

    def pair_rate(key: str) -> float | None:
        return pairs_per_s(confirms[key]) if key in confirms else None

    lines += ["## Ratios", ""]
    lines += _table(
        ["Ratio", "Rejection", "On-sale", "Commit", "Hold + confirm"],
        [
            [
                "Redis front ÷ db-only",
                _ratio(rps(a), rps(b)),
                _ratio(sale_rps(REDIS_FRONT), sale_rps(DB_ONLY)),
                _ratio(commit_rate(REDIS_FRONT), commit_rate(DB_ONLY)),
                _ratio(pair_rate(REDIS_FRONT), pair_rate(DB_ONLY)),
            ],
            [
                "Redis front ÷ naive",
                _ratio(rps(a), rps(c)),
                _ratio(sale_rps(REDIS_FRONT), sale_rps(NAIVE)),
                _ratio(commit_rate(REDIS_FRONT), commit_rate(NAIVE)),
                "n/a",
            ],
            ["Redis front ÷ bare Litestar", _pct(rps(a), rps(d)), "", "", ""],
            [
                "Postgres CPU, Redis front ÷ db-only",
                _pct(a.cost.postgres_cpu_s if a else None, b.cost.postgres_cpu_s if b else None),
                "",
                "",
                "",
            ],
        ],
    )
    bulkheads = {item.target: item for item in report.bulkhead}
    if bulkheads:
        lines += [
            "Bulkhead, confirm p99 during the storm ÷ quiet: "
            + ", ".join(
                f"{_name(key)} {item.storm.p99_ms / item.quiet.p99_ms:.1f}x"
                for key, item in bulkheads.items()
            ),
            "",
        ]

    lines += _rejection_section(report, cpus)
    lines += _onsale_section(report, cpus)
    lines += _commit_section(report, cpus)
    lines += _scaling_section(report, cpus)
    lines += _postgres_section(report)
    lines += _bulkhead_section(report, cpus)
    return lines


def _all_runs(report: Report) -> list[Run]:
    return [
        *report.rejection,
        *(sale.run for sale in report.onsale),
        *report.commit,
        *report.hold_confirm,
        *report.scaling_workers,
        *report.scaling_concurrency,
        *(item.storm_run for item in report.bulkhead),
        *report.pool_rejection,
        *(sale.run for sale in report.ga_onsale),
        *report.availability,
        *(run for r in report.webhook_rounds for run in (r.rejection, r.commit)),
        *([report.flash_sale.run] if report.flash_sale else []),
    ]


def _others_cores(run: Run) -> float:
    return run.cost.others_cpu_s / run.wrk.wall_s if run.wrk.wall_s else 0.0


def _noise(report: Report) -> list[str]:
    """How much CPU other processes took during the measured runs: the machine is shared."""
    runs = _all_runs(report)
    if not runs:
        return []
    busiest = max(runs, key=_others_cores)
    mean = sum(_others_cores(run) for run in runs) / len(runs)
    text = (
        "Other processes than the benchmark's (kernel threads included, such as the page cache's writeback) "
        f"took {mean:.2f} cores on average during the measured runs, at most {_others_cores(busiest):.2f} "
        f"(during a run on {_name(busiest.target)})."
    )
    if _others_cores(busiest) > NOISY_CORES:
        text = f"**{text} Numbers are skewed where they did: re-run on a quiet machine.**"
    return [text, ""]


def _rejection_section(report: Report, cpus: int) -> list[str]:
    lines = [
        "## 1. Rejection path",
        "",
        f"Every request asks for a slot held beforehand, each as a new holder; wrk -t{report.plan.threads} "
        f"-c{report.plan.storm_connections}, {report.plan.run_s} s. CPU columns: CPU time used during the "
        "run (the target's processes; the benchmark's Postgres and Redis). Every gateway row runs with the "
        "defaults as shipped, the access log included (JSON lines at INFO, to a file; 1 in 100 hold-creation "
        "409s logged); the access-log-off row sets only `GATEWAY_ACCESS_LOG=false`.",
        "",
    ]
    rows = [
        [
            _name(run.target),
            thousands(run.wrk.rps),
            ms(run.wrk.latency.p50_us),
            ms(run.wrk.latency.p99_us),
            thousands(run.wrk.other_than(409)),
            _per_request_us(run.cost.server_cpu_s, run),
            f"{run.cost.postgres_cpu_s:.2f}",
            f"{run.cost.redis_cpu_s:.2f}",
            _wrk_cores(run, cpus),
            f"{_others_cores(run):.2f}",
        ]
        for run in report.rejection
    ]
    return (
        lines
        + _table(
            [
                "Target",
                "req/s",
                "p50 ms",
                "p99 ms",
                "non-409",
                "target CPU µs/req",
                "Postgres CPU s",
                "Redis CPU s",
                "wrk took (cores)",
                "others took (cores)",
            ],
            rows,
        )
        + _layers_section(report)
    )


# loadtests.cpu_layers's layers, each containing the one before it (but bare, and litestar: the service too).
_LAYERS = [
    ("redis", "Redis: the acquire script call alone (the pipelined client)"),
    ("service", "service: validate and create, the 409 caught (its Redis call included)"),
    ("hot", "the app through the hot route: request id, metrics, access log, problem+json (and the service)"),
    ("litestar", "the app through Litestar's route instead (`GATEWAY_HOT_ROUTES=false`)"),
    ("bare", "bare Litestar: decode the body, answer 409, no I/O"),
]


def _layers_section(report: Report) -> list[str]:
    layers = report.cpu_layers
    if not all(key in layers for key, _ in _LAYERS):
        return []
    plan = report.plan
    adds = {"redis": layers["redis"], "service": layers["service"] - layers["redis"]}
    adds |= {"hot": layers["hot"] - layers["service"], "litestar": layers["litestar"] - layers["service"]}
    rows = [[what, f"{layers[key]:.0f}", f"{adds[key]:.0f}" if key in adds else ""] for key, what in _LAYERS]
    lines = [
        "### Where a rejection's CPU goes",
        "",
        "`python -m loadtests.cpu_layers`: the gateway's app (settings as shipped, Redis in front) and bare "
        "Litestar called in process as ASGI apps, no HTTP server, 64 requests at a time; the CPU time of the "
        f"process's thread per rejection, best of {plan.layer_rounds} round(s) of {plan.layer_requests:,} "
        "per layer (a busy machine changes it little: waits cost no CPU).",
        "",
        *_table(["Layer", "CPU µs per rejection", "adds"], rows),
    ]
    a, d = report.find(report.rejection, REDIS_FRONT), report.find(report.rejection, BARE)
    if a is not None and d is not None and a.wrk.requests and d.wrk.requests:
        server_a = 1e6 * a.cost.server_cpu_s / a.wrk.requests - layers["hot"]
        server_d = 1e6 * d.cost.server_cpu_s / d.wrk.requests - layers["bare"]
        lines += [
            "The rest of each request's CPU in section 1's runs is the HTTP server's (uvicorn, httptools: "
            "sockets, parsing, writing) and the process's: about "
            f"{server_a:.0f} µs per rejection for the gateway, {server_d:.0f} µs per request for bare "
            "Litestar. "
            f"In the app, a rejection costs {layers['hot']:.0f} µs against bare Litestar's "
            f"{layers['bare']:.0f}, and its Redis call alone is {layers['redis']:.0f} of them.",
            "",
        ]
    return lines


def _per_request_us(cpu_s: float, run: Run) -> str:
    return f"{1e6 * cpu_s / run.wrk.requests:.0f}" if run.wrk.requests else "n/a"


def _onsale_section(report: Report, cpus: int) -> list[str]:
    plan = report.plan
    lines = [
        "## 2. Contended on-sale",
        "",
        f"{plan.onsale_requests:,} hold requests for {plan.onsale_seats} seats from "
        f"{plan.onsale_connections} connections, random seats, unique holders, each target fresh (new "
        "database and key prefix). Sold out after: the last successful hold's `created_at` (Postgres's "
        "clock) minus the moment wrk was started. Postgres transactions: the database's `xact_commit + "
        "xact_rollback` in `pg_stat_database`, before the run and after the target was stopped and the "
        "counts stopped changing.",
        "",
    ]
    rows = []
    for sale in report.onsale:
        run, flushed = sale.run, sale.run.transactions
        per_request = transactions_per_request(run)
        verdict = "ok" if onsale_ok(sale) else "**FAILED**"
        rows.append(
            [
                _name(sale.target),
                thousands(run.wrk.rps),
                f"{sale.sold_out_s:.2f}" if sale.sold_out_s is not None else "n/a",
                ms(run.wrk.latency.p99_us),
                f"{run.wrk.count(201)} / {sale.seats} {verdict}",
                str(sale.sold_in_database),
                f"{per_request:.3f}" if per_request is not None else "n/a",
                _settled(flushed.settled, flushed.waited_s) if flushed else "n/a",
                _wrk_cores(run, cpus),
            ]
        )
    return lines + _table(
        [
            "Target",
            "req/s",
            "sold out after s",
            "p99 ms",
            "201s / seats",
            "live holds in DB",
            "PG transactions / request",
            "statistics",
            "wrk took (cores)",
        ],
        rows,
    )


def _settled(settled: bool, waited_s: float) -> str:
    return f"settled after {waited_s:.1f} s" if settled else f"**still changing after {waited_s:.0f} s**"


def _commit_section(report: Report, cpus: int) -> list[str]:
    plan = report.plan
    lines = [
        "## 3. Commit path",
        "",
        f"Uncontended holds, each on a fresh slot (wrk -c{plan.storm_connections}, {plan.short_run_s} s).",
        "",
    ]
    lines += _table(
        ["Target", "holds/s", "p50 ms", "p99 ms", "non-201", "target CPU µs/req", "wrk took (cores)"],
        (
            [
                _name(run.target),
                thousands(holds_per_s(run)),
                ms(run.wrk.latency.p50_us),
                ms(run.wrk.latency.p99_us),
                thousands(run.wrk.other_than(201)),
                _per_request_us(run.cost.server_cpu_s, run),
                _wrk_cores(run, cpus),
            ]
            for run in report.commit
        ),
    )
    lines += [
        "Hold + confirm: each hold on a fresh slot, then its confirm; a pair: a hold and its confirm (200).",
        "",
    ]
    lines += _table(
        ["Target", "pairs/s", "p50 ms", "p99 ms", "statuses", "wrk took (cores)"],
        (
            [
                _name(run.target),
                thousands(pairs_per_s(run)),
                ms(run.wrk.latency.p50_us),
                ms(run.wrk.latency.p99_us),
                _statuses(run),
                _wrk_cores(run, cpus),
            ]
            for run in report.hold_confirm
        ),
    )
    return lines + _winner_layers(report)


def _winner_layers(report: Report) -> list[str]:
    layers = report.cpu_layers
    if not all(key in layers for key in ("win", "win_db", "win_redis")):
        return []
    plan = report.plan
    extra = layers["win"] - layers["win_db"] + layers["win_redis"]
    return [
        "### Where a winner's CPU goes",
        "",
        "`python -m loadtests.cpu_layers`, as in section 1: the gateway's app called in process, 64 requests "
        f"at a time, each a hold on a fresh seat (201); best of {plan.layer_rounds} round(s) of "
        f"{plan.layer_requests:,}. Redis's own CPU from its `INFO cpu`; Postgres's is in neither row.",
        "",
        *_table(
            ["Winner", "gateway CPU µs per hold", "Redis CPU µs per hold"],
            [
                ["Redis in front", f"{layers['win']:.0f}", f"{layers['win_redis']:.0f}"],
                ["db-only", f"{layers['win_db']:.0f}", "0"],
            ],
        ),
        "A winner with Redis in front does all that a db-only winner does, and before its claim its "
        "share of an `acquire.lua` call, after it its share of an `extend.lua` call (each shared by the "
        f"creates of one event-loop pass): {extra:.0f} µs more CPU per hold, on cores that the gateway, "
        "Postgres and Redis share here. That is the price of turning losers away before Postgres; with no "
        "loser to turn away (every seat fresh), Redis in front cannot commit faster than db-only. Where "
        "there are losers, it does (section 2).",
        "",
    ]


def _statuses(run: Run) -> str:
    text = ", ".join(f"{status}: {count:,}" for status, count in sorted(run.wrk.statuses.items()))
    errors = run.wrk.socket_errors.total
    return text + (f", socket errors: {errors}" if errors else "")


def _scaling_section(report: Report, cpus: int) -> list[str]:
    lines = ["## 4. Scaling (gateway, Redis in front, rejection path)", ""]

    def row(run: Run, label: str) -> list[str]:
        return [
            label,
            thousands(run.wrk.rps),
            ms(run.wrk.latency.p50_us),
            ms(run.wrk.latency.p90_us),
            ms(run.wrk.latency.p99_us),
            ms(run.wrk.latency.max_us),
            thousands(run.wrk.other_than(409)),
            _wrk_cores(run, cpus),
        ]

    headers = ["req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-409", "wrk took (cores)"]
    lines += _table(
        ["Workers", *headers],
        (
            row(run, f"{run.workers} (-c{run.wrk.connections}, {run.wrk.duration_s:.0f} s)")
            for run in report.scaling_workers
        ),
    )
    ordered = sorted(
        report.scaling_concurrency, key=lambda run: (run.target != REDIS_FRONT, run.wrk.connections)
    )
    lines += _table(
        [f"Connections ({report.plan.workers} workers)", *headers],
        (
            row(
                run,
                str(run.wrk.connections) + ("" if run.target == REDIS_FRONT else f" ({_name(run.target)})"),
            )
            for run in ordered
        ),
    )
    lines += [
        "Read the p99 at high concurrency against bare Litestar's at the same concurrency: with hundreds "
        "of connections per worker, some requests wait far longer than the rest even with no I/O at all.",
        "",
    ]
    return lines


def _postgres_section(report: Report) -> list[str]:
    lines = [
        "## 5. Postgres work per rejection",
        "",
        "Transactions: counted in the target's database over its rejection run (after the gateway was "
        "stopped, so that every backend had flushed its statistics). They include the gateway's sweeper, "
        "which runs a couple of statements per worker per second whether or not requests arrive. Postgres "
        "CPU: utime + stime of the postmaster and all its processes (exited ones through the postmaster's "
        "cutime/cstime), read from /proc before and after the run; /proc counts whole clock ticks (1/100 s) "
        "per process, so a few milliseconds of idle housekeeping read as 0.",
        "",
    ]
    rows = []
    for run in report.rejection:
        per_request = transactions_per_request(run)
        count = transactions(run)
        rows.append(
            [
                _name(run.target),
                thousands(run.wrk.requests),
                str(count) if count is not None else "—",
                f"{per_request:.5f}" if per_request is not None else "—",
                _settled(run.transactions.settled, run.transactions.waited_s) if run.transactions else "—",
                f"{run.cost.postgres_cpu_s:.2f}",
                _per_request_us(run.cost.postgres_cpu_s, run),
            ]
        )
    lines += _table(
        [
            "Target",
            "requests",
            "PG transactions",
            "per request",
            "statistics",
            "PG CPU s",
            "PG CPU µs/req",
        ],
        rows,
    )
    a, b = report.find(report.rejection, REDIS_FRONT), report.find(report.rejection, DB_ONLY)
    if a and b:
        lines += [
            f"Postgres CPU, Redis front ÷ db-only: {_pct(a.cost.postgres_cpu_s, b.cost.postgres_cpu_s)} "
            f"({a.cost.postgres_cpu_s:.2f} s ÷ {b.cost.postgres_cpu_s:.2f} s, target ≤ 5%).",
            "",
        ]
    return lines


def _bulkhead_section(report: Report, cpus: int) -> list[str]:
    plan = report.plan
    lines = [
        "## 6. Bulkhead: confirms during a rejection storm",
        "",
        f"{plan.bulkhead_rate_per_s} confirms/s (each on a different hold made beforehand) for "
        f"{plan.bulkhead_s} s from an asyncio client on 8 keep-alive connections, latency counted from each "
        f"confirm's due time; first alone, then while wrk -c{plan.storm_connections} sends rejections.",
        "",
    ]
    rows = [
        [
            _name(item.target),
            f"{item.quiet.p50_ms:.1f} / {item.quiet.p99_ms:.1f}",
            f"{item.storm.p50_ms:.1f} / {item.storm.p99_ms:.1f}",
            f"{storm_ratio(item):.1f}x",
            str(item.quiet.sent + item.storm.sent - item.quiet.count(200) - item.storm.count(200)),
            thousands(item.storm_run.wrk.rps),
            f"{item.quiet.client_cpu_s:.2f} / {item.storm.client_cpu_s:.2f}",
            _wrk_cores(item.storm_run, cpus),
        ]
        for item in report.bulkhead
    ]
    return lines + _table(
        [
            "Target",
            "quiet p50 / p99 ms",
            "storm p50 / p99 ms",
            "p99 storm ÷ quiet",
            "non-200 confirms",
            "storm req/s",
            "client CPU s (quiet / storm)",
            "wrk took (cores)",
        ],
        rows,
    )


def _ga_section(report: Report, cpus: int) -> list[str]:
    """Section 7: general admission (pools)."""
    plan = report.plan
    lines = [
        "## 7. General admission (pools)",
        "",
        "### Rejection storm on a sold-out pool",
        "",
        f"Every request asks for one unit of a pool sold out beforehand (one hold took its {STORM_CAPACITY} "
        "units), each as a new holder: the seat storm of section 1 for general admission, with the same "
        f"methodology (wrk -t{plan.threads} -c{plan.storm_connections}, {plan.run_s} s, after a warm-up with "
        "the same script, each target fresh). Beside it, the held-seat storm and bare Litestar of section 1 "
        "when this report has them (measured in other target processes of the same run). Postgres "
        "transactions are counted with Redis in front, as in section 5.",
        "",
    ]
    rows = []
    for key, seat, pool in (
        (
            REDIS_FRONT,
            report.find(report.rejection, REDIS_FRONT),
            report.find(report.pool_rejection, REDIS_FRONT),
        ),
        (DB_ONLY, report.find(report.rejection, DB_ONLY), report.find(report.pool_rejection, DB_ONLY)),
        (BARE, report.find(report.rejection, BARE), None),
    ):
        for what, run in (("held seat", seat), ("sold-out pool", pool)):
            if run is not None:
                rows.append(_storm_row(_name(key), "no I/O" if key == BARE else what, run, cpus))
    lines += _table(
        [
            "Target",
            "refused",
            "req/s",
            "p50 ms",
            "p99 ms",
            "non-409",
            "target CPU µs/req",
            "PG transactions / request",
            "Postgres CPU s",
            "Redis CPU s",
            "wrk took (cores)",
        ],
        rows,
        align="llrrrrrrrrr",
    )
    a_pool = report.find(report.pool_rejection, REDIS_FRONT)
    a_seat, bare = report.find(report.rejection, REDIS_FRONT), report.find(report.rejection, BARE)
    if a_pool is not None:
        lines += [
            "Redis in front, sold-out pool ÷ held seat: "
            f"{_ratio(a_pool.wrk.rps, a_seat.wrk.rps if a_seat else None)}; sold-out pool ÷ bare Litestar: "
            f"{_pct(a_pool.wrk.rps, bare.wrk.rps if bare else None)}.",
            "",
        ]
    lines += _ga_onsale_table(report, cpus)
    lines += _availability_table(report, cpus)
    return lines


def _storm_row(name: str, what: str, run: Run, cpus: int) -> list[str]:
    per_request = transactions_per_request(run)
    return [
        name,
        what,
        thousands(run.wrk.rps),
        ms(run.wrk.latency.p50_us),
        ms(run.wrk.latency.p99_us),
        thousands(run.wrk.other_than(409)),
        _per_request_us(run.cost.server_cpu_s, run),
        f"{per_request:.5f}" if per_request is not None else "—",
        f"{run.cost.postgres_cpu_s:.2f}",
        f"{run.cost.redis_cpu_s:.2f}",
        _wrk_cores(run, cpus),
    ]


def _ga_onsale_table(report: Report, cpus: int) -> list[str]:
    plan = report.plan
    lines = [
        "### On-sale of one pool",
        "",
        f"{plan.ga_requests:,} hold requests for 1 to 4 units (uniformly) of one pool of "
        f"{plan.ga_capacity:,} units, from {plan.onsale_connections} connections, unique holders, each "
        "target fresh; demand is about twice the supply. Sold out after: the last live hold's `created_at` "
        "minus the moment wrk was started. Units by 201s: summed by wrk from the answers; in the gateway: "
        "held + confirmed units of the pool per the holds listing, read from the target started again once "
        "its Postgres transactions were counted (as in section 2).",
        "",
    ]
    rows = []
    for sale in report.ga_onsale:
        run, flushed = sale.run, sale.run.transactions
        per_request = transactions_per_request(run)
        rows.append(
            [
                _name(sale.target),
                thousands(run.wrk.rps),
                f"{sale.sold_out_s:.2f}" if sale.sold_out_s is not None else "n/a",
                ms(run.wrk.latency.p99_us),
                f"{sale.units_granted:,} / {sale.capacity:,} {'ok' if ga_onsale_ok(sale) else '**FAILED**'}",
                f"{sale.units_in_gateway:,}",
                f"{run.wrk.count(201):,} / {sale.holds_in_gateway:,}",
                f"{per_request:.3f}" if per_request is not None else "n/a",
                _settled(flushed.settled, flushed.waited_s) if flushed else "n/a",
                _wrk_cores(run, cpus),
            ]
        )
    lines += _table(
        [
            "Target",
            "req/s",
            "sold out after s",
            "p99 ms",
            "units by 201s / capacity",
            "units in gateway",
            "holds: 201s / listed",
            "PG transactions / request",
            "statistics",
            "wrk took (cores)",
        ],
        rows,
    )
    sales = {sale.target: sale for sale in report.ga_onsale}
    a, b = sales.get(REDIS_FRONT), sales.get(DB_ONLY)
    if a and b and a.sold_out_s and b.sold_out_s:
        lines += [
            f"Time to sell out, db-only ÷ Redis in front: {b.sold_out_s / a.sold_out_s:.2f}x "
            f"({b.sold_out_s:.2f} s vs {a.sold_out_s:.2f} s).",
            "",
        ]
    return lines


def _availability_table(report: Report, cpus: int) -> list[str]:
    plan = report.plan
    lines = [
        "### Availability reads",
        "",
        f"`GET /v1/events/{{e}}/availability` of an event with two pools and 100 seats, some held and some "
        f"confirmed (wrk -t{plan.threads} -c{plan.storm_connections}, {plan.run_s} s, after a warm-up that "
        "reaches neither Redis nor Postgres). Postgres transactions: counted in the target's database over "
        "the run as in section 5, the sweeper's and the few of the event's set-up not yet flushed included. "
        "A transaction runs one statement or more, so statements per read are at least the transactions "
        "per read.",
        "",
    ]
    rows = []
    for run in report.availability:
        count, per_read = transactions(run), transactions_per_request(run)
        rows.append(
            [
                _name(run.target),
                thousands(run.wrk.rps),
                ms(run.wrk.latency.p50_us),
                ms(run.wrk.latency.p99_us),
                thousands(run.wrk.other_than(200)),
                str(count) if count is not None else "—",
                f"{per_read:.5f}" if per_read is not None else "—",
                _settled(run.transactions.settled, run.transactions.waited_s) if run.transactions else "—",
                _per_request_us(run.cost.server_cpu_s, run),
                f"{run.cost.postgres_cpu_s:.2f}",
                _wrk_cores(run, cpus),
            ]
        )
    return lines + _table(
        [
            "Target",
            "reads/s",
            "p50 ms",
            "p99 ms",
            "non-200",
            "PG transactions",
            "per read",
            "statistics",
            "target CPU µs/read",
            "Postgres CPU s",
            "wrk took (cores)",
        ],
        rows,
    )


def _seconds(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def _lag(lag: Lag | None) -> str:
    """p50 / p99 / max, in seconds."""
    return f"{lag.p50_s:.2f} / {lag.p99_s:.2f} / {lag.max_s:.2f}" if lag else "n/a"


def _rate(value: float | None) -> str:
    return thousands(value) if value is not None else "n/a"


def _webhooks_section(report: Report, cpus: int) -> list[str]:
    """Section 8: webhooks on and off, the flash sale delivered, hold.expired's lag."""
    lines = [
        "## 8. Webhooks",
        "",
        "What one webhook endpoint costs the hot paths, and how fast and how completely the hold events "
        "reach it. The receiver is the benchmark's own (`loadtests/bench/receiver.py`: asyncio on uvloop, "
        "keep-alive, 204 to every POST, each `webhook-id` recorded once with the time it arrived, nothing "
        "checked). It is a process of its own on the same "
        f"{cpus} cores as the gateway, Postgres, Redis and wrk: its CPU is shown apart and is part of what "
        "webhooks cost here; a deployment's receiver runs elsewhere. Receipt times are compared with the "
        "timestamps Postgres wrote (`occurred_at`, `expires_at`) on the same machine's clock.",
        "",
    ]
    marks = {True: "yes", False: "**no**", None: "n/a"}
    lines += _table(
        ["Target", "Measured", "Met?"],
        ([v.target, v.measured, marks[v.met]] for v in webhook_verdicts(report)),
        align="lll",
    )
    lines += _webhook_rounds_table(report, cpus)
    lines += _flash_sale_table(report)
    lines += _expiry_table(report)
    return lines


def _webhook_rounds_table(report: Report, cpus: int) -> list[str]:
    plan = report.plan
    lines = [
        "### The hot paths, webhooks off and on",
        "",
        f"Alternating rounds (off, on, off, on, …; {plan.webhook_rounds} of each), each on a fresh gateway "
        f"with Redis in front ({plan.workers} workers, every setting as shipped): without any webhook "
        "endpoint, and with one registered to the receiver. Each round measures the rejection path "
        f"(reject.lua, a held seat, wrk -t{plan.threads} -c{plan.storm_connections}, {plan.run_s} s) and the "
        f"commit path (commit.lua, a fresh seat per hold, {plan.short_run_s} s), each after a "
        f"{plan.warmup_s} s warm-up with the same script, as sections 1 and 3 do. With webhooks on, what the "
        "warm-up left owed is delivered before the measured run starts, so a run pays for its own events' "
        "deliveries only: every hold the commit run makes is one `hold.created` to number, fan out, send "
        "and record, in the same worker processes that serve the holds, while a rejection changes nothing "
        "and makes no event. As shipped, a worker finishing more than 100 requests a second yields to them "
        "(`GATEWAY_WEBHOOK_YIELD_ABOVE_RPS`): it sends only deliveries owed for 10 s "
        "(`GATEWAY_WEBHOOK_MAX_DEFER_S`) and drains the rest once the load drops, so a commit run's "
        "deliveries mostly go out after it; the second table shows the lag that costs. CPU columns: the "
        "gateway's processes per request; Postgres and the receiver over the commit run.",
        "",
    ]
    rows = []
    for item in report.webhook_rounds:
        rejection, commit = item.rejection, item.commit
        rows.append(
            [
                str(item.round),
                "on" if item.target == REDIS_FRONT_WEBHOOKS else "off",
                thousands(rejections_per_s(rejection)),
                ms(rejection.wrk.latency.p99_us),
                _per_request_us(rejection.cost.server_cpu_s, rejection),
                thousands(holds_per_s(commit)),
                ms(commit.wrk.latency.p99_us),
                _per_request_us(commit.cost.server_cpu_s, commit),
                f"{commit.cost.postgres_cpu_s:.2f}",
                f"{commit.cost.receiver_cpu_s:.2f}",
                thousands(rejection.wrk.other_than(409) + commit.wrk.other_than(201)),
                f"{max(_others_cores(rejection), _others_cores(commit)):.2f}",
            ]
        )
    lines += _table(
        [
            "Round",
            "Webhooks",
            "rejections/s",
            "p99 ms",
            "target CPU µs/req",
            "commits/s",
            "p99 ms",
            "target CPU µs/req",
            "Postgres CPU s (commit)",
            "receiver CPU s (commit)",
            "unexpected statuses",
            "others took (cores)",
        ],
        rows,
        align="llrrrrrrrrrr",
    )
    parts = []
    for rate, what in (("rejection", "rejections"), ("commit", "commits")):
        off, on = webhook_means(report, rate)
        parts.append(
            f"{what} {_ratio(on, off, '')} ({_rate(on)} vs {_rate(off)} a second)"
            if webhook_ratio(report, rate) is not None
            else f"{what} n/a"
        )
    lines += [f"On ÷ off, means of the rounds: {'; '.join(parts)}.", ""]

    deliveries = [
        (item.round, item.commit_delivery) for item in report.webhook_rounds if item.commit_delivery
    ]
    if deliveries:
        lines += [
            "The measured commit runs' events at the receiver (webhooks on): latency from each event's "
            "`occurred_at` to its receipt; backlog: events not yet received when the run's last one "
            "occurred; drained: from then to the last receipt.",
            "",
        ]
        lines += _table(
            ["Round", "events", "received", "latency p50 / p99 / max s", "backlog", "drained after s"],
            (
                [
                    str(number),
                    f"{delivery.events:,}",
                    f"{delivery.received:,}" + ("" if delivery_ok(delivery) else " **incomplete**"),
                    _lag(delivery.latency),
                    f"{delivery.received_after_last_event:,}",
                    _seconds(last_event_to_last_receipt_s(delivery)),
                ]
                for number, delivery in deliveries
            ),
        )
    return lines


def _flash_sale_table(report: Report) -> list[str]:
    sale = report.flash_sale
    plan = report.plan
    lines = [
        "### Flash sale with webhooks on",
        "",
        f"{plan.webhook_sale_holds:,} seats, each asked for once by each of wrk's {plan.threads} threads in "
        f"an order of its own (onsale.lua, {plan.onsale_connections} connections, unique holders): one 201 "
        "and the rest 409 per seat. Then every tenth hold (in the order they were made) is confirmed from 8 "
        "keep-alive connections, so that there are `hold.confirmed` events too. Then the benchmark waits "
        "until the receiver has every event the feed numbered (counted in the target's `hold_events`), with "
        "a ceiling of 60 s plus a second per 50 events. Delivery throughput while draining: the events "
        "that arrived after the sale's last event (its last confirm), over the time from that event to "
        "the last receipt; overall: every event over the time from the sale's first event to the last "
        "receipt. A sale shorter than `GATEWAY_WEBHOOK_MAX_DEFER_S` is delivered almost wholly after it "
        "(the workers yield while it runs): the time from its last commit to the last delivery is then the "
        "backlog over the drain rate.",
        "",
    ]
    if sale is None:
        return [*lines, "Not measured.", ""]
    delivery = sale.delivery
    by_type = ", ".join(f"{kind}: {count:,}" for kind, count in sorted(sale.events_by_type.items()))
    lines += _table(
        ["Flash sale", ""],
        [
            ["Holds (201s) / seats", f"{sale.run.wrk.count(201):,} / {sale.seats:,}"],
            ["Hold requests a second (wrk)", thousands(sale.run.wrk.rps)],
            [
                "Confirms (200s) / sent",
                f"{sale.confirmed:,} / {sale.confirms_sent:,} in {sale.confirm_wall_s:.2f} s",
            ],
            ["Events numbered", f"{delivery.events:,} ({by_type})"],
            [
                "Events at the receiver",
                f"{delivery.received:,} ({'every one' if delivery_ok(delivery) else '**NOT every one**'}; "
                f"{delivery.unexpected} unexpected)",
            ],
            ["Backlog when the sale's last event occurred", f"{delivery.received_after_last_event:,} events"],
            ["Delivery throughput while draining", f"{_rate(drain_rate_per_s(delivery))} events/s"],
            ["Delivery throughput overall", f"{_rate(overall_rate_per_s(delivery))} events/s"],
            ["Sale's last commit → last delivery", f"{_seconds(last_event_to_last_receipt_s(delivery))} s"],
            ["Latency, `occurred_at` → receipt, p50 / p99 / max", f"{_lag(delivery.latency)} s"],
            ["Receiver CPU during the holds (wrk)", f"{sale.run.cost.receiver_cpu_s:.2f} s"],
        ],
        align="lr",
    )
    return lines


def _expiry_table(report: Report) -> list[str]:
    expiry = report.expiry
    lines = [
        "### Expiry to delivery",
        "",
        "Holds of the minimum ttl made at once on the flash sale's gateway once its deliveries were all "
        "in, then left to lapse under the default sweep: for each `hold.expired`, its receipt minus the "
        f"hold's `expires_at`. The contract: within {EXPIRED_WITHIN_S:g} s. Of that, the sweep: the "
        "event's `occurred_at` (the sweeper's statement) minus `expires_at`; the rest is numbering "
        f"(every {0.1:g} s) and delivery.",
        "",
    ]
    if expiry is None:
        return [*lines, "Not measured.", ""]
    lines += _table(
        [
            "Holds",
            "ttl s",
            "sweep interval s",
            "hold.expired at the receiver",
            "expires_at → receipt p50 / p99 / max s",
            "of which the sweep, p50 / p99 / max s",
        ],
        [
            [
                str(expiry.holds),
                str(expiry.ttl_s),
                f"{expiry.sweep_interval_s:g}",
                f"{expiry.delivery.received} of {expiry.delivery.events}"
                + ("" if expiry_ok(expiry) else " **FAILED**"),
                _lag(expiry.after_expires),
                _lag(expiry.swept_after),
            ]
        ],
    )
    return lines


def _method_notes() -> list[str]:
    return [
        "## How it was measured",
        "",
        "- Load: wrk with the Lua scripts in `loadtests/bench/wrk/`; each thread counts the statuses it "
        "receives and `done()` prints one JSON line (requests, duration, latency percentiles, statuses, "
        'socket errors). "wrk took": wrk\'s user + system CPU over its run, in cores.',
        "- The on-sale's threads stop after their share of requests (an empty request parks a connection), "
        "and wrk is then sent SIGINT; its warm-up sends only invalid bodies (422), which reach neither "
        "Redis nor Postgres, so that no warm-up transaction ends up in the count.",
        "- Postgres flushes its per-database statistics lazily (a busy backend about once a second, an idle "
        "one about 10 s later, every one when it exits): transactions are read after stopping the target, "
        "polling until unchanged for 2 s (at most 15 s).",
        "- The naive baseline holds a slot with one transaction that locks the slot's row (`SELECT … FOR "
        "UPDATE`, then UPDATE + INSERT); its slots are seeded beforehand. Bare Litestar decodes the same "
        "body into the gateway's request Struct and answers 409 with no I/O.",
        "- Before each measured run the target's database is ANALYZEd, as autovacuum keeps that of a "
        "long-running deployment: rows inserted by earlier runs would otherwise be planned for as if the "
        "tables were still empty. (Not before the runs whose transactions are counted: their databases are "
        "empty.)",
    ]
