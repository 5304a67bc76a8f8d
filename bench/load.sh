#!/usr/bin/env bash
# Load benchmark of the decision service: bare axum ceiling, a durable baseline, Warden on
# SQLite and PostgreSQL.
#
# One run measures, over loopback with CONNECTIONS keep-alive connections:
#   bare      `loadgen bare`, a plain axum handler answering a fixed copy of Warden's ~550-byte
#             decision: the ceiling of the HTTP stack on this machine;
#   durable   `loadgen durable`, the same handler appending each body as one row to a fresh
#             SQLite file (WAL, synchronous=FULL) through a group-commit writer thread and
#             answering after the commit: what durability alone costs here, the baseline
#             Warden on SQLite is held to;
#   sqlite    `warden serve` on a fresh SQLite file, audit durable (the server's default),
#             with the example policy's `budgets:` and `rate_limits:` taken out: stateless;
#   stateful  the same with the example policy whole (its `per: run` budget on tool_calls,
#             tokens, cost_usd and duration) plus a per-agent rate limit on `ticket.*`, so
#             every allow also checks and charges six counters in the append's transaction;
#             every request names a new run, the worst case: five new counter rows each;
#   postgres  `warden serve --migrate` on a fresh database `warden_bench_<pid>`, dropped after.
# For each: a closed-loop peak run (rps, p50, p99), then an open-loop run at half that peak
# (p99, corrected for coordinated omission). When both `durable` and `sqlite` ran, `durable`
# is run once more at half of *Warden's* peak, so the two p99s are compared at the same
# offered load. It ends with a Markdown table for docs/BENCHMARKS.md and the machine line.
#
# The generator (crates/warden-server/examples/loadgen.rs) runs on one thread and shares the
# machine's cores with the server it measures: absolute numbers are lower than with a separate
# client machine, for the bare handler and Warden alike.
#
# Environment:
#   DURATION=10s  WARMUP=2s  CONNECTIONS=64     per run
#   TARGETS="bare durable sqlite postgres"      which targets to run, in that order
#                                               (also: stateful; run it beside sqlite)
#   WARDEN_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
#                                               server to create the bench database on
#   BASE_PORT=18471                             bare on it, sqlite +1, postgres +2, durable +3,
#                                               stateful +4
#   WARDEN_KEY_ARGS=""                          extra arguments for `warden keys create`
#
# Needs: cargo, curl, jq, and psql for the PostgreSQL target.
#
# Exit status: non-zero if a run failed or saw non-2xx answers or connection errors.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
TARGETS="${TARGETS:-bare durable sqlite postgres}"
PG_URL="${WARDEN_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
BASE_PORT="${BASE_PORT:-18471}"
read -r -a KEY_ARGS <<<"${WARDEN_KEY_ARGS:-}"

cd "$ROOT"
echo "== building (release)" >&2
if [[ " $TARGETS " != *" sqlite "* && " $TARGETS " != *" postgres "* && " $TARGETS " != *" stateful "* ]]; then
    cargo build --release -p warden-server --example loadgen >&2
else
    cargo build --release -p warden -p warden-server --bin warden --example loadgen >&2
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
WARDEN="$TARGET_DIR/release/warden"
LOADGEN="$TARGET_DIR/release/examples/loadgen"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/warden-bench.XXXXXX")"
SERVER_PID=""
PG_DB=""
PG_BENCH_URL=""

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

cleanup() {
    stop_server
    if [[ -n "$PG_DB" ]]; then
        psql "$PG_URL" -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" \
            >/dev/null 2>&1 || echo "warning: could not drop database $PG_DB" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_ready ADDR LOG: poll /healthz until it answers, the server dies, or 60 s pass.
wait_ready() {
    local addr="$1" log="$2"
    for _ in $(seq 1 600); do
        if curl -fsS -o /dev/null "http://$addr/healthz" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "error: the server on $addr exited; its log:" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: the server on $addr was not ready after 60 s; its log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

# The action: examples/nexus/actions/resolve.json, confident (an allow with a `mode: draft`
# obligation, the common path, as in the policy benchmark), with a unique idempotency key and
# run per request so no answer is an idempotent replay and no budget counter is shared.
# action_body TAG: writes the body for one run and prints its path.
action_body() {
    local file="$WORK/action-$1.json"
    jq --arg tag "$1" \
        '.id = "bench-\($tag)-{{n}}" | .run_id = "run-\($tag)-{{n}}" | .confidence = 0.91' \
        "$ROOT/examples/nexus/actions/resolve.json" >"$file"
    echo "$file"
}

# loadgen_run NAME URL KEY TAG [--rate R]: one run; leaves loadgen's JSON line in $RESULT.
FAILED=0
RESULT="$WORK/result.json"
loadgen_run() {
    local name="$1" url="$2" key="$3" tag="$4"
    shift 4
    local status=0
    local args=(run --url "$url" --body "$(action_body "$tag")" --connections "$CONNECTIONS"
        --duration "$DURATION" --warmup "$WARMUP" --json "$@")
    # The key goes through the environment, not the command line other users can see.
    LOADGEN_KEY="$key" "$LOADGEN" "${args[@]}" >"$WORK/run.out" || status=$?
    echo "$name ${*:-peak}: $(head -n 1 "$WORK/run.out")" >&2
    if [[ $status -ne 0 ]]; then
        echo "warning: $name run exited with status $status (see above)" >&2
        FAILED=1
    fi
    tail -n 1 "$WORK/run.out" >"$RESULT"
}

declare -A RPS P50 P99 HALF_P99 HALF_RATE HALF_NOTE
# The durable baseline's p99 at half of Warden's (SQLite) peak, and that rate.
AT_WARDEN_P99=""
AT_WARDEN_NOTE=""

# measure NAME ADDR KEY: peak run, then half-peak run; fills the tables above.
measure() {
    local name="$1" addr="$2" key="$3" url answer
    url="http://$addr/v1/decisions"
    # One request first, to show what path is measured and to stop early on a 4xx.
    local probe=(-fsS -X POST -H 'content-type: application/json' --data-binary @-)
    if [[ -n "$key" ]]; then
        printf 'authorization: Bearer %s\n' "$key" >"$WORK/auth-header"
        probe+=(-H "@$WORK/auth-header")
    fi
    if ! answer="$(sed 's/{{n}}/probe/g' "$(action_body probe)" | curl "${probe[@]}" "$url")"; then
        echo "error: the probe request to $name failed" >&2
        exit 1
    fi
    echo "$name answers: $(jq -c '{effect, reasons: [.reasons[]?.rule], obligations}' \
        <<<"$answer" 2>/dev/null || echo "$answer")" >&2
    loadgen_run "$name" "$url" "$key" "$name-peak"
    RPS[$name]="$(jq -r '.rps | floor' "$RESULT")"
    P50[$name]="$(jq -r .p50_us "$RESULT")"
    P99[$name]="$(jq -r .p99_us "$RESULT")"
    HALF_RATE[$name]=$((RPS[$name] / 2))
    if [[ ${HALF_RATE[$name]} -lt 1 ]]; then
        echo "error: $name measured no successful requests" >&2
        FAILED=1
        HALF_P99[$name]="n/a"
        return
    fi
    loadgen_run "$name" "$url" "$key" "$name-half" --rate "${HALF_RATE[$name]}"
    HALF_P99[$name]="$(jq -r .p99_us "$RESULT")"
    if jq -e '.rps < 0.95 * .target_rate' "$RESULT" >/dev/null; then
        HALF_NOTE[$name]=", fell behind: $(jq -r '.rps | floor' "$RESULT")/s achieved"
    fi
}

run_bare() {
    local addr="127.0.0.1:$BASE_PORT"
    "$LOADGEN" bare --listen "$addr" >"$WORK/bare.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$addr" "$WORK/bare.log"
    measure bare "$addr" ""
    stop_server
}

DURABLE_ADDR="127.0.0.1:$((BASE_PORT + 3))"
DURABLE_DB="$WORK/durable/requests.db"

# start_durable: serve the durable baseline on DURABLE_ADDR, appending to DURABLE_DB (kept
# between its runs, as Warden's database is between its peak and half-peak runs).
start_durable() {
    mkdir -p "$WORK/durable"
    "$LOADGEN" durable --listen "$DURABLE_ADDR" --db "$DURABLE_DB" >>"$WORK/durable.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$DURABLE_ADDR" "$WORK/durable.log"
}

run_durable() {
    start_durable
    measure durable "$DURABLE_ADDR" ""
    stop_server
}

# durable_at_warden_rate: the durable baseline, open loop at half of Warden's SQLite peak.
durable_at_warden_rate() {
    local rate="${HALF_RATE[sqlite]}"
    echo "== durable at half of Warden's peak ($rate/s)" >&2
    start_durable
    loadgen_run durable "http://$DURABLE_ADDR/v1/decisions" "" durable-at-warden --rate "$rate"
    AT_WARDEN_P99="$(jq -r .p99_us "$RESULT")"
    if jq -e '.rps < 0.95 * .target_rate' "$RESULT" >/dev/null; then
        AT_WARDEN_NOTE=", fell behind: $(jq -r '.rps | floor' "$RESULT")/s achieved"
    fi
    stop_server
}

# The example policy without its `budgets:` and `rate_limits:` sections: no counters.
stateless_policy() {
    sed '/^budgets:/,/^audit:/{/^audit:/!d}' "$ROOT/examples/nexus/nexus.yaml"
}

# The example policy whole, plus a rate limit every benchmark action falls under. Its limits
# are far above what a run can reach: every answer stays an allow.
stateful_policy() {
    sed 's/^rate_limits:/rate_limits:\n  - {id: bench-agent-rate, actions: ["ticket.*"], per: agent, limit: 1000000000, window: 1h}/' \
        "$ROOT/examples/nexus/nexus.yaml"
}

# run_warden NAME ADDR DB_URL POLICY_FN [serve flags...]: serve, create a controller key,
# measure.
run_warden() {
    local name="$1" addr="$2" db="$3" policy="$4" dir="$WORK/$1" key
    shift 4
    mkdir -p "$dir/policies" "$dir/data"
    "$policy" >"$dir/policies/default.yaml"
    (cd "$dir" && exec "$WARDEN" serve --listen "$addr" --db "$db" --policies "$dir/policies" \
        --data-dir "$dir/data" "$@") >"$dir/serve.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$addr" "$dir/serve.log"
    # After the server is up, so its migrations have run on either backend. The action names
    # agent `support-bot`; a controller key names only the agents its pattern allows.
    key="$(cd "$dir" && "$WARDEN" keys create --role controller --tenant default \
        --agent 'support-*' --label load-benchmark --db "$db" "${KEY_ARGS[@]}")"
    key="$(head -n 1 <<<"$key")"
    if [[ -z "$key" ]]; then
        echo "error: \`warden keys create\` printed no key" >&2
        exit 1
    fi
    measure "$name" "$addr" "$key"
    stop_server
}

run_sqlite() {
    run_warden sqlite "127.0.0.1:$((BASE_PORT + 1))" "$WORK/sqlite/warden.db" stateless_policy
}

run_stateful() {
    run_warden stateful "127.0.0.1:$((BASE_PORT + 4))" "$WORK/stateful/warden.db" stateful_policy
}

run_postgres() {
    PG_DB="warden_bench_$$"
    local base="${PG_URL%%\?*}" query=""
    [[ "$PG_URL" == *\?* ]] && query="?${PG_URL#*\?}"
    PG_BENCH_URL="${base%/*}/$PG_DB$query"
    psql "$PG_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $PG_DB" >/dev/null
    run_warden postgres "127.0.0.1:$((BASE_PORT + 2))" "$PG_BENCH_URL" stateless_policy --migrate
}

for target in $TARGETS; do
    echo "== $target" >&2
    case "$target" in
        bare) run_bare ;;
        durable) run_durable ;;
        sqlite) run_sqlite ;;
        postgres) run_postgres ;;
        stateful) run_stateful ;;
        *)
            echo "error: unknown target \`$target\` (bare, durable, sqlite, postgres, stateful)" >&2
            exit 2
            ;;
    esac
done

HAVE_PAIR=""
if [[ -n "${RPS[durable]:-}" && -n "${RPS[sqlite]:-}" && "${HALF_RATE[sqlite]:-0}" -ge 1 ]]; then
    HAVE_PAIR=1
    durable_at_warden_rate
fi

# share TARGET BASE: TARGET's peak rps as a whole percentage of BASE's, or — without BASE.
share() {
    if [[ -n "${RPS[$2]:-}" && "${RPS[$2]}" -gt 0 ]]; then
        echo "$((100 * RPS[$1] / RPS[$2]))%"
    else
        echo "—"
    fi
}

# The report, on stdout.
echo
echo "Measured $(date -u +%Y-%m-%d), \`bench/load.sh\`, $CONNECTIONS keep-alive connections," \
    "$DURATION per run after $WARMUP warmup, generator on the same machine:"
echo
echo "| target | rps | p50 | p99 | p99 at half peak | % of bare | % of durable |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for target in $TARGETS; do
    label="$target"
    [[ "$target" == bare ]] && label="bare axum handler"
    [[ "$target" == durable ]] && label="durable baseline (SQLite row per request)"
    [[ "$target" == sqlite ]] && label="Warden, SQLite"
    [[ "$target" == postgres ]] && label="Warden, PostgreSQL"
    [[ "$target" == stateful ]] && label="Warden, SQLite, a budget and a rate limit"
    half="${HALF_P99[$target]}"
    [[ "$half" != "n/a" ]] && half="$half µs (at ${HALF_RATE[$target]}/s${HALF_NOTE[$target]:-})"
    echo "| $label | ${RPS[$target]} | ${P50[$target]} µs | ${P99[$target]} µs | $half |" \
        "$(share "$target" bare) | $(share "$target" durable) |"
done
if [[ -n "$HAVE_PAIR" ]]; then
    echo
    echo "At the same offered load, half of Warden's SQLite peak (${HALF_RATE[sqlite]}/s):" \
        "Warden p99 ${HALF_P99[sqlite]} µs${HALF_NOTE[sqlite]:-}," \
        "durable baseline p99 $AT_WARDEN_P99 µs$AT_WARDEN_NOTE."
fi
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"

if [[ -n "$HAVE_PAIR" ]]; then
    share=$((100 * RPS[sqlite] / RPS[durable]))
    verdict="met"
    [[ $share -lt 60 ]] && verdict="NOT met"
    echo
    echo "Target: Warden on SQLite ≥ 60% of the durable baseline: $share%, $verdict."
    if [[ "${HALF_P99[sqlite]}" != "n/a" && "$AT_WARDEN_P99" -gt 0 ]]; then
        verdict="met"
        [[ ${HALF_P99[sqlite]} -gt $((2 * AT_WARDEN_P99)) ]] && verdict="NOT met"
        echo "Target: Warden's p99 ≤ 2× the baseline's at ${HALF_RATE[sqlite]}/s:" \
            "${HALF_P99[sqlite]} µs against $AT_WARDEN_P99 µs" \
            "($(awk -v w="${HALF_P99[sqlite]}" -v d="$AT_WARDEN_P99" 'BEGIN {printf "%.1f", w / d}')×), $verdict."
    fi
fi

if [[ " $TARGETS " == *" sqlite "* && -n "${RPS[bare]:-}" ]]; then
    share=$((100 * RPS[sqlite] / RPS[bare]))
    verdict="met"
    [[ $share -lt 50 ]] && verdict="NOT met"
    echo
    echo "Target: Warden on SQLite ≥ 50% of the bare handler: $share%, $verdict."
    if [[ "${HALF_P99[sqlite]}" != "n/a" ]]; then
        verdict="met"
        [[ ${HALF_P99[sqlite]} -ge 2000 ]] && verdict="NOT met"
        echo "Target: p99 at half of Warden's peak < 2 ms: ${HALF_P99[sqlite]} µs on SQLite, $verdict."
    fi
fi

if [[ -n "${RPS[stateful]:-}" && -n "${RPS[sqlite]:-}" && "${RPS[sqlite]}" -gt 0 ]]; then
    share=$((100 * RPS[stateful] / RPS[sqlite]))
    verdict="met"
    [[ $share -lt 70 ]] && verdict="NOT met"
    echo
    echo "Target: Warden on SQLite with a budget and a rate limit ≥ 70% of the stateless" \
        "throughput: $share%, $verdict."
fi

if [[ $FAILED -ne 0 ]]; then
    echo
    echo "WARNING: some runs saw non-2xx answers or connection errors (see stderr);" \
        "the numbers above do not describe a healthy server."
    exit 1
fi
