# shellcheck shell=bash
# ./run package: a tarball per major, a .deb for Debian's 15, the PGXN source zip. Sourced by
# ./run.

# The extension's version, from the top-level Cargo.toml's [package].
crate_version() {
  awk '/^\[package\]/ { p = 1; next } /^\[/ { p = 0 } p && /^version *=/ { gsub(/[" ]/, "", $0);
       sub(/^version=/, "", $0); print; exit }' "$ROOT/Cargo.toml"
}

# Package one major: `cargo pgrx package` into a staging directory, then
#   slot_failover-<version>-pg<major>-<arch>.tar.gz  lib/, extension/, bin/ (the promotion
#                                                    gate), install.sh, README
#   postgresql-<major>-slot-failover_<version>-1_<arch>.deb   only for Debian's own build (15)
package_major() {
  local major=$1 profile=$2 out=$3 version=$4
  local pgc stage pkglibdir sharedir bindir arch name tree
  pgc=$(pg_config_of "$major")
  stage="$CARGO_TARGET_DIR/package-$profile/pg$major"
  say "packaging slot_failover $version for PostgreSQL $major ($profile build)"
  rm -rf "$stage"
  local flags=(--pg-config "$pgc" --no-default-features --features "pg$major" --out-dir "$stage")
  [ "$profile" = debug ] && flags+=(--debug)
  local log="$CACHE/package-pg$major.log"
  cargo pgrx package "${flags[@]}" >"$log" 2>&1 || { cat "$log" >&2; die "cargo pgrx package failed for $major"; }
  pkglibdir=$("$pgc" --pkglibdir)
  sharedir=$("$pgc" --sharedir)
  bindir=$("$pgc" --bindir)
  arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
  [ -f "$stage$pkglibdir/slot_failover.so" ] || die "no slot_failover.so in $stage$pkglibdir"

  name="slot_failover-$version-pg$major-$arch"
  tree="$stage/tarball/$name"
  mkdir -p "$tree/lib" "$tree/extension" "$tree/bin"
  cp "$stage$pkglibdir/slot_failover.so" "$tree/lib/"
  install -m 755 "$ROOT/packaging/slot_failover_pre_promote" "$tree/bin/"
  cp "$stage$sharedir"/extension/slot_failover* "$tree/extension/"
  sed -e "s/@MAJOR@/$major/g" -e "s/@VERSION@/$version/g" "$ROOT/packaging/install.sh" >"$tree/install.sh"
  chmod 755 "$tree/install.sh"
  sed -e "s/@MAJOR@/$major/g" -e "s/@VERSION@/$version/g" "$ROOT/packaging/README.package" >"$tree/README"
  cp -r "$ROOT/docs" "$ROOT/monitoring" "$tree/"
  tar -czf "$out/$name.tar.gz" -C "$stage/tarball" "$name"
  echo "$out/$name.tar.gz"

  # A Debian package is honest only for Debian's own PostgreSQL build, whose paths it installs
  # into (14, 16, 17 and 18 are built here against other builds of the same major).
  [ "$major" = 15 ] || return 0
  local deb="$stage/deb" pkg="postgresql-$major-slot-failover"
  local root="$CACHE/pg/15" libc
  mkdir -p "$deb/DEBIAN" "$deb${pkglibdir#"$root"}" "$deb${sharedir#"$root"}/extension" \
    "$deb${bindir#"$root"}" "$deb/usr/share/doc/$pkg"
  cp "$tree/bin/slot_failover_pre_promote" "$deb${bindir#"$root"}/"
  cp "$tree/lib/slot_failover.so" "$deb${pkglibdir#"$root"}/"
  cp "$tree"/extension/* "$deb${sharedir#"$root"}/extension/"
  cp "$ROOT/README.md" "$deb/usr/share/doc/$pkg/README.md"
  cp -r "$ROOT/docs" "$ROOT/monitoring" "$deb/usr/share/doc/$pkg/"
  printf 'slot_failover %s\nLicense: PostgreSQL\n' "$version" >"$deb/usr/share/doc/$pkg/copyright"
  libc=$(dpkg-query -W -f='${Version}' libc6 | sed 's/-.*//')
  sed -e "s/@MAJOR@/$major/g" -e "s/@VERSION@/$version/g" -e "s/@ARCH@/$arch/g" \
    -e "s/@LIBC@/$libc/g" -e "s/@SIZE@/$(du -sk "$deb" | cut -f1)/g" \
    "$ROOT/packaging/debian.control" >"$deb/DEBIAN/control"
  find "$deb" -type d -exec chmod 755 {} +
  find "$deb" -type f -exec chmod 644 {} +
  chmod 755 "$deb${pkglibdir#"$root"}/slot_failover.so"
  chmod 755 "$deb${bindir#"$root"}/slot_failover_pre_promote"
  dpkg-deb --root-owner-group -Zxz --build "$deb" "$out/${pkg}_$version-1_$arch.deb" >/dev/null
  echo "$out/${pkg}_$version-1_$arch.deb"
}

cmd_package() {
  local profile=release out="$ROOT/dist" majors=() major version
  while [ $# -gt 0 ]; do
    case "$1" in
      --debug) profile=debug ;;
      --out) out=$2; shift ;;
      *) majors+=("$1") ;;
    esac
    shift
  done
  [ ${#majors[@]} -gt 0 ] || majors=("${SUPPORTED_MAJORS[@]}")
  check_majors "${majors[@]}"
  setup "${majors[@]}"
  cd "$ROOT"
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  version=$(crate_version)
  for major in "${majors[@]}"; do package_major "$major" "$profile" "$out" "$version"; done
  # PGXN takes a source distribution with META.json at its top.
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" archive --format=zip --prefix="slot_failover-$version/" \
      -o "$out/slot_failover-$version.zip" HEAD
    echo "$out/slot_failover-$version.zip"
  fi
}

