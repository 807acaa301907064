#!/usr/bin/env bash
# Issue 7's floor: throughput of bin/proxy with envoy.filters.http.ratelimit
# on (limit never reached) against the same proxy without it, everything on
# this machine: upstream, bin/proxy, bin/rls, redis-server and wrk share the
# cores (no pinning). Three listeners in one round: plain, filter on with
# sidemesh's batch stream to RLS (the default), filter on with one unary
# ShouldRateLimit per request (as Envoy calls RLS; --rls-unary). Prints
# req/s, the ratio to plain, CPU µs per request of proxy, rls and redis, and
# of everything (+ upstream and wrk): on a CPU-bound box the ratio of those
# totals ("by CPU") predicts the throughput ratio and is far steadier than
# req/s when other work shares the machine. One core each, as in bench.sh:
# the proxies and the upstream run with GOMAXPROCS=1, and so does rls
# (RLS_ENV=GOMAXPROCS=2 to change; on two shared cores GOMAXPROCS=1 cost
# rls ≈ 35 % less CPU per call — fewer cross-thread wake-ups).
#   proxy/bench/ratelimit.sh [rounds=3] [seconds=10] [connections=64]
set -euo pipefail
ROUNDS=${1:-3}; DUR=${2:-10}; CONNS=${3:-64}
D=/tmp/sidemesh-rlbench; mkdir -p $D/rules
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk"; exit 1; }
./scripts/ensure-deps.sh >/dev/null
go build -o $D/upstream ./proxy/bench/upstream
go build -o $D/proxy ./proxy/cmd/proxy
go build -o $D/rls ./services/rls/cmd/rls
printf 'domain: bench\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 1000000000}\n' > $D/rules/bench.yaml
sed 's/port_value: PORT/port_value: 28086/' proxy/bench/proxy-ratelimit.yaml > $D/batch.yaml
sed 's/port_value: PORT/port_value: 28087/; s/id: bench-rl,/id: bench-rl-unary,/' proxy/bench/proxy-ratelimit.yaml > $D/unary.yaml
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
redis-server --port 28092 --save '' --appendonly no --logfile $D/redis.log & PIDS+=($!); REDIS=$!
GOMAXPROCS=1 $D/upstream -addr 127.0.0.1:28000 & PIDS+=($!); UP=$!
env ${RLS_ENV:-GOMAXPROCS=1} $D/rls --grpc-addr 127.0.0.1:28091 --admin-addr 127.0.0.1:28093 --rules $D/rules --redis-url redis://127.0.0.1:28092/0 --log-level warn ${RLS_FLAGS_EXTRA:-} & PIDS+=($!); RLS=$!
GOMAXPROCS=1 $D/proxy --bootstrap proxy/bench/proxy.yaml --admin-addr 127.0.0.1:28090 --log-level warn & PIDS+=($!); PLAIN=$!
GOMAXPROCS=1 $D/proxy --bootstrap $D/batch.yaml --admin-addr 127.0.0.1:28094 --log-level warn ${PROXY_FLAGS_EXTRA:-} & PIDS+=($!); BATCH=$!
GOMAXPROCS=1 $D/proxy --bootstrap $D/unary.yaml --admin-addr 127.0.0.1:28095 --log-level warn --rls-unary & PIDS+=($!); UNARY=$!
for port in 28085 28086 28087; do
  for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$port/ && break; sleep 0.1; done
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/); [ "$code" = 200 ] || { echo "listener $port answers $code"; exit 1; }
done
cpu() { set -- $(sed 's/^.*) //' /proc/$1/stat); echo $(( ${12} + ${13} )); }
HZ=$(getconf CLK_TCK)
THREADS=2; [ "$CONNS" -lt 2 ] && THREADS=1
BASE=0; BASECPU=0
run() { # name port proxy-pid
  local p0 r0 d0 u0 p1 r1 d1 u1 out reqs wcpu
  p0=$(cpu $3); r0=$(cpu $RLS); d0=$(cpu $REDIS); u0=$(cpu $UP)
  out=$( { TIMEFORMAT='wrkcpu %U %S'; time wrk -t$THREADS -c$CONNS -d${DUR}s --latency http://127.0.0.1:$2/ ; } 2>&1)
  p1=$(cpu $3); r1=$(cpu $RLS); d1=$(cpu $REDIS); u1=$(cpu $UP)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  wcpu=$(echo "$out" | awk '/^wrkcpu/ {print $2 + $3}')
  local errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  local p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  # all CPU per request: proxy, rls, redis, upstream, wrk (µs)
  local all=$(awk -v p=$((p1-p0)) -v rl=$((r1-r0)) -v rd=$((d1-d0)) -v u=$((u1-u0)) -v w=$wcpu -v hz=$HZ -v r=$reqs \
    'BEGIN { printf "%.1f", ((p+rl+rd+u)/hz + w)*1e6/r }')
  [ "$1" = plain ] && { BASE=$reqs; BASECPU=$all; }
  awk -v n=$1 -v r=$reqs -v b=$BASE -v p=$((p1-p0)) -v rl=$((r1-r0)) -v rd=$((d1-d0)) -v hz=$HZ -v d=$DUR -v l=$p50 -v e="$errs" -v all=$all -v bc=$BASECPU \
    'BEGIN { printf "%-6s req/s %7.0f  %5.1f%% of plain (by CPU %5.1f%%)  proxy %5.1f  rls %5.1f  redis %5.1f  all %5.1f us/req  p50 %s %s\n", n, r/d, 100*r/b, 100*bc/all, p/hz*1e6/r, rl/hz*1e6/r, rd/hz*1e6/r, all, l, e }'
}
for port in 28085 28086 28087; do wrk -t$THREADS -c$CONNS -d2s http://127.0.0.1:$port/ >/dev/null; done
for r in $(seq $ROUNDS); do
  echo "round $r (c$CONNS, ${DUR}s)"
  run plain 28085 $PLAIN; run batch 28086 $BATCH; run unary 28087 $UNARY
done
