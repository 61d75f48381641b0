"""How fast the operations reads answer, on a quiet gateway and during a rejection storm.

Point it at a running gateway; it seeds holds over several events, times each ops read (sequentially, one
at a time, so it measures latency rather than throughput), then starts `wrk` with loadtests/wrk/reject.lua
against the same gateway and times them again while the storm runs. Prints a Markdown table.

    python loadtests/ops_reads.py --url http://127.0.0.1:8000 [--token T] [--holds 5000] [--samples 100]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

WRK_SCRIPT = Path(__file__).with_name("wrk") / "reject.lua"
EVENTS = 50


def seed(url: str, holds: int) -> None:
    """`holds` holds of 1-2 seats over EVENTS events, a fifth of them confirmed, TTLs from 30 s to 10 min."""

    def one(i: int) -> None:
        body = {
            "event_id": f"ops-{i % EVENTS}",
            "slots": [f"S-{i}"] + ([f"S-{i}-b"] if i % 3 == 0 else []),
            "holder": f"seed-{i}",
            "ttl_seconds": 30 + (i * 7) % 570,
        }
        with httpx.Client(base_url=url, timeout=30) as client:
            created = client.post("/v1/holds", json=body)
            if created.status_code == 201 and i % 5 == 0:
                client.post(f"/v1/holds/{created.json()['id']}/confirm", json={"holder": body["holder"]})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(holds)))
    # The storm's slot: held once, so every storm request is a rejection.
    httpx.post(f"{url}/v1/holds", json={"event_id": "bench", "slots": ["A-1"], "holder": "owner"}, timeout=30)


READS = {
    "GET /v1/stats": "/v1/stats",
    "GET /v1/events/{e}/stats": "/v1/events/ops-7/stats",
    "GET /v1/holds?status=held&limit=100": "/v1/holds?status=held&limit=100",
    "GET /v1/holds?expiring_within_seconds=60": "/v1/holds?expiring_within_seconds=60&limit=100",
    "GET /v1/holds?event_id=…&holder=…": "/v1/holds?event_id=ops-7&holder=seed-7",
    "GET /v1/events/{e}/slots": "/v1/events/ops-7/slots",
    "GET /metrics": "/metrics",
}


def time_reads(client: httpx.Client, samples: int) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
    for name, path in READS.items():
        latencies_ms = []
        for _ in range(samples):
            started = time.perf_counter()
            response = client.get(path)
            latencies_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                sys.exit(f"{path}: {response.status_code} {response.text[:200]}")
        quantiles = statistics.quantiles(latencies_ms, n=100)
        results[name] = (quantiles[49], quantiles[98])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("GATEWAY_OPS_TOKEN"))
    parser.add_argument("--holds", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--connections", type=int, default=64, help="wrk connections during the storm")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk not found: install Debian's `wrk` package")

    seed(args.url, args.holds)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        quiet = time_reads(client, args.samples)
        storm = subprocess.Popen(  # noqa: S603 - wrk and arguments of our own
            [wrk, "-t2", f"-c{args.connections}", "-d600s", "-s", str(WRK_SCRIPT), args.url],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # let the storm reach its pace
            loaded = time_reads(client, args.samples)
        finally:
            storm.terminate()
            storm.wait()
        stats = client.get("/v1/stats").json()

    print(
        f"Ops reads, {args.samples} sequential samples each; storm: wrk -t2 -c{args.connections} rejections"
    )
    print(f"Database: {stats['holds']} ; agreement: {json.dumps(stats['agreement'])}\n")
    print("| read | quiet p50 ms | quiet p99 ms | storm p50 ms | storm p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name in READS:
        cells = [f"{ms:.1f}" for ms in (*quiet[name], *loaded[name])]
        print(f"| `{name}` | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
