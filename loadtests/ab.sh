#!/usr/bin/env bash
# A/B between git revisions of the gateway, side by side in one run: for each round, each revision in turn is
# served (`gateway serve --workers 2`, defaults as shipped, the machine's Postgres and Redis on 127.0.0.1)
# and measured with wrk for DUR seconds on one path (PATH_UNDER_TEST):
#   reject  its seat is held once, and wrk asks for it from new holders (every answer a 409);
#   commit  every request holds a seat nobody asked for before (every answer a 201).
# Compare within one run only: this machine's throughput varies about 10% from run to run.
#
#   loadtests/ab.sh 59380b8 HEAD                               # ROUNDS=3 DUR=12 PATH_UNDER_TEST=reject
#   ROUNDS=5 DUR=15 PATH_UNDER_TEST=commit loadtests/ab.sh main my-branch
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

trees=()
for rev in "$@"; do
  tree="$work/tree-${#trees[@]}"
  git -C "$top" worktree add -q --detach "$tree" "$rev"
  trees+=("$tree")
done

for round in $(seq 1 "$rounds"); do
  for i in "${!trees[@]}"; do
    tree=${trees[$i]}; rev=${*:$((i + 1)):1}
    db="ab_${round}_${i}_$$"; port=$((20000 + RANDOM % 20000))
    psql -q "$postgres/postgres" -c "CREATE DATABASE $db"
    # The revision's own package: `python -m` imports from the current directory first.
    (cd "$tree" && GATEWAY_DATABASE_URL="$postgres/$db" GATEWAY_REDIS_URL=redis://127.0.0.1:6379/0 \
      GATEWAY_REDIS_KEY_PREFIX="ab$$r${round}t$i" GATEWAY_LOG_LEVEL=WARNING \
      exec setsid "$python" -m gateway.cli serve --port "$port" --workers 2 >"$work/serve.log" 2>&1) &
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
    out=$(wrk -t2 -c64 -d"${duration_s}s" --latency -s "$script" "http://127.0.0.1:$port" "${script_args[@]}")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    refused=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    printf 'round %s  %-12s %-6s %9s req/s  p99 %8s  %s of %s answered non-2xx\n' \
      "$round" "$rev" "$path_under_test" "$rps" "$p99" "${refused:-0}" "$total"
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    psql -q "$postgres/postgres" -c "DROP DATABASE $db WITH (FORCE)"
  done
done
