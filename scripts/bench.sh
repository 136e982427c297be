# shellcheck shell=bash
# ./run bench, ./run bench-sync, ./run bench-activity and ./run bench-hold: optimized builds,
# benchmarks side by side with PostgreSQL 17's own slot sync, JSON in bench-results/. Sourced
# by ./run.

install_release() {
  local major=$1
  say "building and installing an optimized slot_failover for PostgreSQL $major"
  cargo pgrx install --release --pg-config "$(pg_config_of "$major")" \
    --no-default-features --features "pg$major" >"$CACHE/install-pg$major.log" 2>&1 \
    || { cat "$CACHE/install-pg$major.log" >&2; die "building slot_failover for PostgreSQL $major failed"; }
}

# ./run bench [MAJOR...]: sync lag and scale side by side with the built-in slot sync (17+),
# cost and lag by number of active subscriptions and write rate (17+), then the hold-back's
# throughput cost; tables on the terminal, JSON in bench-results/.
cmd_bench() {
  local majors=("$@") major
  [ ${#majors[@]} -gt 0 ] || majors=(17 18)
  check_majors "${majors[@]}"
  setup "${majors[@]}"
  cd "$ROOT"
  mkdir -p "$ROOT/bench-results"
  for major in "${majors[@]}"; do
    install_release "$major"
    SLOT_FAILOVER_PG_CONFIG="$(pg_config_of "$major")" cargo run --quiet --release -p pg_test \
      --bin bench_sync -- --json "$ROOT/bench-results/sync-pg$major.json"
    if [ "$major" -ge 17 ]; then
      SLOT_FAILOVER_PG_CONFIG="$(pg_config_of "$major")" cargo run --quiet --release -p pg_test \
        --bin bench_activity -- --json "$ROOT/bench-results/activity-pg$major.json"
    fi
    SLOT_FAILOVER_PG_CONFIG="$(pg_config_of "$major")" cargo run --quiet --release -p pg_test \
      --bin bench_hold -- --txns 100000 --bulk 200 --rounds 3 --json "$ROOT/bench-results/hold-pg$major.json"
  done
  say "JSON results in $ROOT/bench-results/; ./run test reinstalls the test build"
}

# ./run bench-sync MAJOR [args], ./run bench-activity MAJOR [args] and ./run bench-hold MAJOR
# [args]: one benchmark, own arguments.
cmd_bench_one() {
  local bin=$1 major=${2:-17}
  shift 2 || shift $#
  check_majors "$major"
  setup "$major"
  cd "$ROOT"
  install_release "$major"
  SLOT_FAILOVER_PG_CONFIG="$(pg_config_of "$major")" \
    cargo run --quiet --release -p pg_test --bin "$bin" -- "$@"
}

