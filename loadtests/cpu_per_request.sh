#!/usr/bin/env bash
# Server CPU per rejection, side by side in one run: for each round, each variant in turn is served by this
# tree with ONE worker (`gateway serve --workers 1`, the machine's Postgres and Redis on 127.0.0.1, or bare
# Litestar: loadtests.bench.bare), its seat is held once, wrk asks for it from new holders for DUR seconds
# (every answer a 409), and the CPU the server's processes used (utime + stime, /proc) is divided by the
# requests answered. CPU per request is steadier than req/s on a busy machine: other processes slow the
# server down but do not add to its CPU time.
#
# A variant is `name` then GATEWAY_* assignments, or `bare`:
#   loadtests/cpu_per_request.sh bare hot litestar:GATEWAY_HOT_ROUTES=false
#   ROUNDS=3 DUR=10 loadtests/cpu_per_request.sh bare hot:GATEWAY_ACCESS_LOG=false \
#     litestar:GATEWAY_HOT_ROUTES=false,GATEWAY_ACCESS_LOG=false
set -euo pipefail
top=$(git rev-parse --show-toplevel)
python=${PYTHON:-$top/.venv/bin/python}
rounds=${ROUNDS:-3}
duration_s=${DUR:-10}
connections=${CONNECTIONS:-64}
postgres=${AB_POSTGRES:-postgresql://postgres@127.0.0.1:5432}
ticks_per_s=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# CPU seconds (user + system) of every live process in process group $1.
group_cpu_ticks() {
  local total=0 stat fields
  for stat in /proc/[0-9]*/stat; do
    fields=$(sed 's/.*) //' "$stat" 2>/dev/null) || continue
    # After the command: state ppid pgrp ... utime (12th) stime (13th).
    read -r -a f <<<"$fields"
    if [ "${f[2]:-}" = "$1" ]; then total=$((total + f[11] + f[12])); fi
  done
  echo "$total"
}

for round in $(seq 1 "$rounds"); do
  for variant in "$@"; do
    name=${variant%%:*}
    assignments=""
    if [ "$variant" != "$name" ]; then assignments=${variant#*:}; fi
    port=$((20000 + RANDOM % 20000))
    db="cpu_${round}_${name//[^a-z0-9]/_}_$$"
    if [ "$name" = bare ]; then
      (cd "$top" && exec setsid "$python" -m loadtests.bench.bare --port "$port" --workers 1 \
        >"$work/serve.log" 2>&1) &
    else
      psql -q "$postgres/postgres" -c "CREATE DATABASE $db"
      env_args=()
      IFS=',' read -r -a pairs <<<"$assignments"
      for pair in "${pairs[@]}"; do [ -n "$pair" ] && env_args+=("$pair"); done
      (cd "$top" && exec env GATEWAY_DATABASE_URL="$postgres/$db" GATEWAY_REDIS_URL=redis://127.0.0.1:6379/0 \
        GATEWAY_REDIS_KEY_PREFIX="cpu$$r${round}${name//[^a-z0-9]/}" GATEWAY_LOG_LEVEL=WARNING "${env_args[@]}" \
        setsid "$python" -m gateway.cli serve --port "$port" --workers 1 >"$work/serve.log" 2>&1) &
    fi
    pid=$!
    ready=no
    for _ in $(seq 1 300); do
      if curl -sf "localhost:$port/health" >/dev/null; then ready=yes; break; fi
      sleep 0.1
    done
    if [ "$ready" != yes ]; then
      echo "round $round  $name: the server did not start on port $port; its log:" >&2
      tail -20 "$work/serve.log" >&2
      exit 1
    fi
    body='{"event_id":"bench","slots":["A-1"],"holder":"owner","ttl_seconds":3600}'
    curl -s -o /dev/null -X POST "localhost:$port/v1/holds" -H 'Content-Type: application/json' -d "$body"
    # A short warm-up (caches, the first connections), then the measured run.
    wrk -t1 -c"$connections" -d2s -s "$top/loadtests/wrk/reject.lua" "http://127.0.0.1:$port" >/dev/null
    before=$(group_cpu_ticks "$pid")
    out=$(wrk -t1 -c"$connections" -d"${duration_s}s" --latency -s "$top/loadtests/wrk/reject.lua" \
      "http://127.0.0.1:$port")
    after=$(group_cpu_ticks "$pid")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    refused=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    cpu_us=$(awk -v t="$((after - before))" -v n="$total" -v hz="$ticks_per_s" \
      'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    printf 'round %s  %-10s %6s µs CPU/req  %9s req/s  p99 %8s  %s of %s answered non-2xx\n' \
      "$round" "$name" "$cpu_us" "$rps" "$p99" "${refused:-0}" "$total"
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$name" != bare ]; then psql -q "$postgres/postgres" -c "DROP DATABASE $db WITH (FORCE)"; fi
  done
done
