#!/bin/bash
# Side-by-side CPU cost per request: bin/proxy vs nginx vs HAProxy against the
# same upstream, wrk HTTP/1.1 keep-alive. Usage (from the repo root):
#   proxy/bench/bench.sh [rounds] [seconds] [connections]
# Proxies are pinned to CPU 0 with one worker each (GOMAXPROCS=1), the
# upstream to CPU 1; µs/req = (utime+stime of the proxy's processes) / requests.
set -euo pipefail
ROUNDS=${1:-3}; DUR=${2:-10}; CONNS=${3:-64}
D=/tmp/sidemesh-pbench; mkdir -p $D
cd "$(dirname "$0")/../.."
go build -o $D/upstream ./proxy/bench/upstream
go build -o $D/proxy ./proxy/cmd/proxy
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
GOMAXPROCS=1 taskset -c 1 $D/upstream -addr 127.0.0.1:28000 & PIDS+=($!)
taskset -c 0 /usr/sbin/nginx -c "$PWD/proxy/bench/nginx.conf" -e $D/nginx-error.log & PIDS+=($!)
taskset -c 0 /usr/sbin/haproxy -db -f proxy/bench/haproxy.cfg & PIDS+=($!)
GOMAXPROCS=1 taskset -c 0 $D/proxy --bootstrap proxy/bench/proxy.yaml --admin-addr 127.0.0.1:28090 --log-level warn & PIDS+=($!)
NGINX=${PIDS[1]}; HAPROXY=${PIDS[2]}; PROXY=${PIDS[3]}
sleep 1
cpu() { # total utime+stime ticks of a process and its children (nginx workers)
  local t=0
  for p in $1 $(pgrep -P $1 || true); do
    set -- $(sed 's/^.*) //' /proc/$p/stat); t=$((t + ${12} + ${13}))
  done; echo $t; }
HZ=$(getconf CLK_TCK)
THREADS=2; [ "$CONNS" -lt 2 ] && THREADS=1
run() { # name port pid (pid "-" = no CPU accounting)
  local c0=0 c1=0 out reqs
  [ "$3" != - ] && c0=$(cpu $3)
  out=$(wrk -t$THREADS -c$CONNS -d${DUR}s --latency http://127.0.0.1:$2/ 2>&1)
  [ "$3" != - ] && c1=$(cpu $3)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  local p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  awk -v n=$1 -v r=$reqs -v c=$((c1-c0)) -v hz=$HZ -v d=$DUR -v p=$p50 -v e="$errs" \
    'BEGIN { printf "%-8s req/s %8.0f  cpu %5.2f cores  %6.1f us/req  p50 %s %s\n", n, r/d, c/hz/d, c/hz*1e6/r, p, e }'
}
for t in 8 28081 28082 28085; do curl -sf -o /dev/null http://127.0.0.1:${t#8}/ 2>/dev/null || true; done
for name_port in nginx:28081:$NGINX haproxy:28082:$HAPROXY proxy:28085:$PROXY; do  # warm-up
  IFS=: read n p pid <<< "$name_port"; wrk -t$THREADS -c$CONNS -d2s http://127.0.0.1:$p/ >/dev/null; done
for r in $(seq $ROUNDS); do
  echo "round $r (c$CONNS, ${DUR}s)"
  run direct 28000 -; run nginx 28081 $NGINX; run haproxy 28082 $HAPROXY; run proxy 28085 $PROXY
done
