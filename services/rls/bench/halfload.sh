#!/usr/bin/env bash
# halfload.sh — p99 of bin/rls (Redis backend, loopback) at half of its measured maximum
# throughput, next to a no-op grpc-go ShouldRateLimit server at the same rate.
#
#   flock -o /tmp/sidemesh-bench.lock services/rls/bench/halfload.sh            # from the repo root
#   PIN=1 flock -o /tmp/sidemesh-bench.lock services/rls/bench/halfload.sh      # loadtest on CPU 0, the rest on CPU 1
#   CLIENT=grpc flock -o /tmp/sidemesh-bench.lock services/rls/bench/halfload.sh # generator on grpc-go instead of h2
#
# One session: redis-server, bin/rls (examples/bench rules) and `bin/loadtest noop-rls` start
# side by side; a closed-loop run (64 callers, 4 connections, unique keys) measures each
# server's maximum; then open loop at half of rls's maximum (128 workers, CO-corrected,
# latency from each request's intended start) against noop and rls, REPS times, interleaved,
# and the no-op server at half of its own maximum.
# Each line ends with what the box did meanwhile (busy cores, steal), so runs disturbed by
# other tenants can be told apart.
#
# The generator's client (loadtest rls --client): CLIENT=h2 (default; loadtest/h2grpc, a lean
# HTTP/2 client that costs the shared box less CPU per call) or grpc (a grpc-go ClientConn, as
# before 2026-12-03). The client is named in each run's header line.
#
# Environment: CLIENT (h2), BIN (default bin), PIN (1: taskset loadtest to CPU 0, rls + redis + noop to
# CPU 1; Go then runs each with GOMAXPROCS=1), RLS_ENV / LT_ENV (e.g. GOMAXPROCS=1),
# REPS (2), RATE (fixed open-loop rate instead of half the maximum), NOOP_HALF (1: each round
# also runs the no-op server at half of its own maximum, the floor applied to the reference;
# skipped with RATE), ports PORT_REDIS (16590), PORT_RLS (18591), PORT_ADMIN (19591),
# PORT_NOOP (18592).
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=${BIN:-bin}
PORT_REDIS=${PORT_REDIS:-16590} PORT_RLS=${PORT_RLS:-18591} PORT_ADMIN=${PORT_ADMIN:-19591} PORT_NOOP=${PORT_NOOP:-18592}
CLIENT=${CLIENT:-h2}
SRV="" LT=""
if [ "${PIN:-0}" = 1 ]; then SRV="taskset -c 1" LT="taskset -c 0"; fi
tmp=$(mktemp -d)
# 3>&- …: a daemon must not inherit a lock descriptor (flock without -o) and hold it forever.
$SRV redis-server --bind 127.0.0.1 --port "$PORT_REDIS" --save '' --appendonly no --daemonize yes \
	--pidfile "$tmp/redis.pid" >/dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
for _ in $(seq 50); do [ -s "$tmp/redis.pid" ] && break; sleep 0.1; done
[ -s "$tmp/redis.pid" ] || { echo "redis-server did not start on :$PORT_REDIS (port in use?)" >&2; exit 1; }
RPID=$(cat "$tmp/redis.pid")
env ${RLS_ENV:-} $SRV "$BIN/rls" --grpc-addr "127.0.0.1:$PORT_RLS" --admin-addr "127.0.0.1:$PORT_ADMIN" \
	--rules services/rls/examples/bench --backend redis --redis-url "redis://127.0.0.1:$PORT_REDIS/0" --log-level error &
RLS=$!
env ${RLS_ENV:-} $SRV "$BIN/loadtest" noop-rls --addr "127.0.0.1:$PORT_NOOP" >/dev/null 2>&1 &
NOOP=$!
cleanup() {
	kill "$RLS" "$NOOP" "$RPID" 2>/dev/null || true
	wait "$RLS" "$NOOP" 2>/dev/null || true
	for _ in $(seq 50); do [ -d "/proc/$RPID" ] || break; sleep 0.1; done # free the port for the next run
	rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT_ADMIN/ready" >/dev/null && break; sleep 0.1; done

rcpu() { awk '{print $14 + $15}' "/proc/$RPID/stat"; }
stat() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6, $9}' /proc/stat; }
# lt TARGET PID ARGS…: one run, one line: throughput, latency, send lag, target/generator/redis CPU, the box
lt() {
	local tgt=$1 pid=$2 a b r0 r1 out; shift 2
	a=($(stat)) r0=$(rcpu)
	out=$(env ${LT_ENV:-} $LT "$BIN/loadtest" rls --target "127.0.0.1:$tgt" --target-pid "$pid" --conns 4 --client "$CLIENT" \
		--domain bench --key user --keys unique "$@" 2>&1) || { echo "$out" >&2; return 1; }
	b=($(stat)) r1=$(rcpu)
	echo "$out" | grep -E '^(throughput|latency|send lag|target cost|generator cost)' |
		sed -E 's/\(part of latency\)//; s/, peak RSS [0-9.]+ MiB//; s/ mean [0-9]+//; s/ +/ /g' | tr '\n' ' '
	awk -v x=$((b[0] - a[0])) -v y=$((b[1] - a[1])) -v s=$((b[2] - a[2])) -v r=$((r1 - r0)) -v t="$(getconf CLK_TCK)" \
		'BEGIN { printf "| redis %.2f CPU s | box busy %.2f cores, steal %d ticks\n", r / t, 2 * x / (x + y), s }'
}
echo "# $(date -u '+%F %H:%M') UTC, load $(cut -d' ' -f1-3 /proc/loadavg), CLIENT=$CLIENT PIN=${PIN:-0} RLS_ENV=${RLS_ENV:-} LT_ENV=${LT_ENV:-}"
cnoop=$(lt "$PORT_NOOP" "$NOOP" --concurrency 64 --duration 6s)
echo "closed noop: $cnoop"
closed=$(lt "$PORT_RLS" "$RLS" --concurrency 64 --duration 6s)
echo "closed rls:  $closed"
max=$(echo "$closed" | sed -E 's/.*throughput ([0-9]+) req.*/\1/')
nmax=$(echo "$cnoop" | sed -E 's/.*throughput ([0-9]+) req.*/\1/')
rate=${RATE:-$((max / 2))}
for _ in $(seq "${REPS:-2}"); do
	echo "open $rate noop: $(lt "$PORT_NOOP" "$NOOP" --concurrency 128 --duration 10s --rate "$rate")"
	echo "open $rate rls:  $(lt "$PORT_RLS" "$RLS" --concurrency 128 --duration 10s --rate "$rate")"
	# The floor applied to the reference itself: the no-op server at half of its own maximum.
	if [ "${NOOP_HALF:-1}" = 1 ] && [ -z "${RATE:-}" ]; then
		echo "open $((nmax / 2)) noop at half its own max: $(lt "$PORT_NOOP" "$NOOP" --concurrency 128 --duration 10s --rate "$((nmax / 2))")"
	fi
done
