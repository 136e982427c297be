# shellcheck shell=bash
# ./run test, ./run lint and ./run demo. Sourced by ./run.

cmd_test() {
  local majors=("$@")
  [ ${#majors[@]} -gt 0 ] || majors=("${SUPPORTED_MAJORS[@]}")
  check_majors "${majors[@]}"
  setup "${majors[@]}"
  cd "$ROOT"

  local log="$CACHE/last-test-run.log" major start rc=0 failed_majors=()
  : >"$log"
  say "the rules (slot_failover_rules: no PostgreSQL, once for every major) and the harness"
  cargo test --quiet -p slot_failover_rules 2>&1 | tee -a "$log" || rc=1
  cargo test --quiet -p pg_test --lib 2>&1 | tee -a "$log" || rc=1
  for major in "${majors[@]}"; do
    start=$SECONDS
    # cargo pgrx test makes a new data directory <major>-<pid> below this one on every run.
    local pgdata="$CACHE/pgrx-test-data"
    rm -rf "$pgdata" && mkdir -p "$pgdata"
    if [ "$(id -u)" = 0 ]; then
      chown "$TEST_USER" "$pgdata"
      set -- --runas "$TEST_USER" --pgdata "$pgdata"
    else
      set -- --pgdata "$pgdata"
    fi
    say "PostgreSQL $major: #[pg_test] tests inside one server"
    if ! cargo pgrx test "pg$major" --no-default-features "$@" 2>&1 | tee -a "$log"; then
      rc=1; failed_majors+=("$major")
    fi
    # cargo pgrx test installed a build with the test functions: replace it with the real one.
    install_extension "$major"
    say "PostgreSQL $major: multi-node tests (pg_test/)"
    if ! SLOT_FAILOVER_PG_CONFIG="$(pg_config_of "$major")" \
        cargo test --quiet --no-fail-fast -p pg_test --test '*' 2>&1 | tee -a "$log"; then
      rc=1; failed_majors+=("$major")
    fi
    say "PostgreSQL $major: done in $((SECONDS - start)) s"
  done
  # pg_upgrade from each tested major to the next one tested: all are installed by now.
  local sorted i from to
  mapfile -t sorted < <(printf '%s\n' "${majors[@]}" | sort -n)
  for ((i = 1; i < ${#sorted[@]}; i++)); do
    from=${sorted[i - 1]} to=${sorted[i]} start=$SECONDS
    say "pg_upgrade from PostgreSQL $from to $to (pg_test/tests/major_upgrade.rs)"
    if ! SLOT_FAILOVER_PG_CONFIG="$(pg_config_of "$from")" \
        SLOT_FAILOVER_UPGRADE_PG_CONFIG="$(pg_config_of "$to")" \
        cargo test --quiet -p pg_test --test major_upgrade -- --ignored --nocapture 2>&1 | tee -a "$log"; then
      rc=1; failed_majors+=("$from->$to")
    fi
    say "pg_upgrade from $from to $to: done in $((SECONDS - start)) s"
  done
  # One closing line over every cargo test run above.
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1);
         if ($(i) ~ /^failed;?$/) f += $(i-1) } } END { printf "summary: %d passed, %d failed\n", p, f }' \
    "$log"
  if [ $rc != 0 ]; then
    say "FAILED on PostgreSQL: ${failed_majors[*]:-harness unit tests} (full log: $log)"
  fi
  return $rc
}

cmd_demo() {
  local major=${1:-17}
  shift || true
  check_majors "$major"
  setup "$major"
  cd "$ROOT"
  install_extension "$major"
  SLOT_FAILOVER_PG_CONFIG="$(pg_config_of "$major")" \
    cargo run --quiet -p pg_test --bin demo -- "$@"
}

cmd_lint() {
  local majors=("$@") major
  [ ${#majors[@]} -gt 0 ] || majors=("${SUPPORTED_MAJORS[@]}")
  check_majors "${majors[@]}"
  setup "${majors[@]}"
  cd "$ROOT"
  say "rustfmt --check, and no dependency cycle between the extension's modules"
  cargo fmt --all -- --check
  python3 "$ROOT/scripts/module_cycles.py"
  say "clippy -D warnings: the rules and the harness"
  cargo clippy --quiet -p slot_failover_rules --all-targets -- -D warnings
  cargo clippy --quiet -p pg_test --all-targets -- -D warnings
  for major in "${majors[@]}"; do
    say "clippy -D warnings: the extension and its tests for PostgreSQL $major"
    cargo clippy --quiet -p slot_failover --all-targets --no-default-features \
      --features "pg$major pg_test" -- -D warnings
  done
}

