"""The gateway's benchmark: one command that starts its own stack and measures every target side by side.

    python -m loadtests.bench [--quick | --smoke] [--only seats|pools|webhooks] [--workers 2]
                              [--out report.md] [--json report.json]

It starts a PostgreSQL and a Redis of its own (free ports, a temporary directory; never the machine's), then,
one at a time and each on a database of its own, the targets, all on uvicorn with the same workers:

a. the gateway with Redis in front (`gateway serve`, defaults as shipped), and once more without access log;
b. the gateway db-only (`gateway serve --db-only`);
c. a naive baseline (naive.py): one `SELECT ... FOR UPDATE` transaction per hold, as most booking services;
d. bare Litestar (bare.py): the same request decoded, a 409 answered, no I/O: the framework's ceiling.

and measures them with wrk (scripts in wrk/): the rejection path, a contended on-sale, the commit path,
scaling with workers and connections, Postgres's work per rejection, and confirms during a rejection storm;
and, for general admission (pools, through the inventory API), a rejection storm on a sold-out pool, the
on-sale of a pool, and availability reads; and, for webhooks, the rejection and commit paths with and
without a webhook endpoint side by side in alternating rounds, a flash sale whose every event is waited for at
the benchmark's own receiver, and how soon a hold.expired arrives after the hold's expires_at.

Modules: stack.py (servers, CPU and transaction counters), naive.py and bare.py (targets), wrk.py (run and
parse wrk), client.py (a keep-alive HTTP client and the confirm stream), scenarios.py (the measurements),
ga.py (those of general admission), webhooks.py and receiver.py (those of webhooks, and the receiver they
send to), results.py (what they produce), verdicts.py (the targets, met or not), report.py (Markdown),
__main__.py (the command).
"""
