#!/usr/bin/env bash
# A/B between git revisions of the gateway, side by side in one run: for each round, each revision in turn is
# served (`gateway serve --workers 2`, defaults as shipped, the machine's Postgres and Redis on 127.0.0.1)
# and measured with wrk for DUR seconds on one path (PATH_UNDER_TEST):
#   reject  its seat is held once, and wrk asks for it from new holders (every answer a 409);
#   commit  every request holds a seat nobody asked for before (every answer a 201).
# A revision may carry settings and `gateway serve` flags: `main:GATEWAY_ACCESS_LOG=false,GATEWAY_LOG_LEVEL=WARNING`,
# `HEAD:--db-only`. Each line also
# gives the CPU time the gateway's processes used per request during the run (µs/req), which a busy machine
# disturbs far less than the throughput. Compare within one run only: throughput varies about 10% from run
# to run.
#
#   loadtests/ab.sh 59380b8 HEAD                               # ROUNDS=3 DUR=12 PATH_UNDER_TEST=reject
#   ROUNDS=5 DUR=15 PATH_UNDER_TEST=commit loadtests/ab.sh main my-branch
#   loadtests/ab.sh HEAD HEAD:GATEWAY_ACCESS_LOG=false
#   PATH_UNDER_TEST=commit loadtests/ab.sh HEAD HEAD:--db-only
set -euo pipefail
top=$(git rev-parse --show-toplevel)
python=${PYTHON:-$top/.venv/bin/python}
rounds=${ROUNDS:-3}
duration_s=${DUR:-12}
path_under_test=${PATH_UNDER_TEST:-reject}
case "$path_under_test" in
  reject) script="$top/loadtests/wrk/reject.lua"; script_args=() ;;
  commit) script="$top/loadtests/bench/wrk/commit.lua"; script_args=(-- commit "c") ;;
  *) echo "PATH_UNDER_TEST must be reject or commit, not $path_under_test" >&2; exit 2 ;;
esac
postgres=${AB_POSTGRES:-postgresql://postgres@127.0.0.1:5432}
work=$(mktemp -d)
trap 'for t in "$work"/tree-*; do git -C "$top" worktree remove --force "$t" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# CPU seconds (user + system) used so far by the processes of process group $1.
cpu_s() {
  "$python" - "$1" <<'EOF'
import os, sys
group, ticks = int(sys.argv[1]), 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(fields[2]) == group:  # pgrp; utime and stime follow at 11 and 12
        ticks += int(fields[11]) + int(fields[12])
print(ticks / os.sysconf("SC_CLK_TCK"))
EOF
}

trees=()
for variant in "$@"; do
  tree="$work/tree-${#trees[@]}"
  git -C "$top" worktree add -q --detach "$tree" "${variant%%:*}"
  trees+=("$tree")
done

for round in $(seq 1 "$rounds"); do
  for i in "${!trees[@]}"; do
    tree=${trees[$i]}; rev=${*:$((i + 1)):1}
    settings=(); flags=()
    if [[ $rev == *:* ]]; then
      IFS=, read -ra extras <<<"${rev#*:}"
      for extra in "${extras[@]}"; do
        if [[ $extra == --* ]]; then flags+=("$extra"); else settings+=("$extra"); fi
      done
    fi
    db="ab_${round}_${i}_$$"; port=$((20000 + RANDOM % 20000))
    psql -q "$postgres/postgres" -c "CREATE DATABASE $db"
    # The revision's own package: `python -m` imports from the current directory first.
    (cd "$tree" && exec env GATEWAY_DATABASE_URL="$postgres/$db" GATEWAY_REDIS_URL=redis://127.0.0.1:6379/0 \
      GATEWAY_REDIS_KEY_PREFIX="ab$$r${round}t$i" "${settings[@]}" \
      setsid "$python" -m gateway.cli serve --port "$port" --workers 2 "${flags[@]}" >"$work/serve.log" 2>&1) &
    pid=$!
    ready=no
    for _ in $(seq 1 300); do
      if curl -sf "localhost:$port/ready" >/dev/null; then ready=yes; break; fi
      sleep 0.1
    done
    if [ "$ready" != yes ]; then
      echo "round $round  $rev: the gateway did not become ready on port $port; its log:" >&2
      tail -20 "$work/serve.log" >&2
      exit 1
    fi
    body='{"event_id":"bench","slots":["A-1"],"holder":"owner","ttl_seconds":3600}'
    curl -s -o /dev/null -X POST "localhost:$port/v1/holds" -H 'Content-Type: application/json' -d "$body"
    cpu_before=$(cpu_s "$pid")
    out=$(wrk -t2 -c64 -d"${duration_s}s" --latency -s "$script" "http://127.0.0.1:$port" "${script_args[@]}")
    cpu_after=$(cpu_s "$pid")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    refused=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu_us=$(awk -v a="$cpu_before" -v b="$cpu_after" -v n="$total" 'BEGIN {printf "%.0f", (b - a) * 1e6 / n}')
    printf 'round %s  %-12s %-6s %9s req/s  p99 %8s  %5s CPU µs/req  %s of %s answered non-2xx\n' \
      "$round" "$rev" "$path_under_test" "$rps" "$p99" "$cpu_us" "${refused:-0}" "$total"
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    psql -q "$postgres/postgres" -c "DROP DATABASE $db WITH (FORCE)"
  done
done
