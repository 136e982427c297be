#!/bin/sh
# Install slot_failover @VERSION@ into a PostgreSQL @MAJOR@ installation.
#
#   ./install.sh [PATH/TO/pg_config]      (default: the pg_config on the PATH)
#
# Copies lib/slot_failover.so into `pg_config --pkglibdir`, extension/* into
# `pg_config --sharedir`/extension and bin/slot_failover_pre_promote (the promotion gate for
# Patroni, see docs/recipes.md) into `pg_config --bindir`. Run it as the user that owns those directories (root for a
# system PostgreSQL). Then see README for postgresql.conf.
set -eu
PG_CONFIG=${1:-pg_config}
here=$(cd "$(dirname "$0")" && pwd)
version=$("$PG_CONFIG" --version) || { echo "install.sh: cannot run $PG_CONFIG" >&2; exit 1; }
major=$(echo "$version" | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
if [ "$major" != "@MAJOR@" ]; then
  echo "install.sh: this package is for PostgreSQL @MAJOR@, but $PG_CONFIG is $version" >&2
  exit 1
fi
pkglibdir=$("$PG_CONFIG" --pkglibdir)
extdir=$("$PG_CONFIG" --sharedir)/extension
bindir=$("$PG_CONFIG" --bindir)
install -m 755 "$here/lib/slot_failover.so" "$pkglibdir/slot_failover.so"
install -m 755 "$here/bin/slot_failover_pre_promote" "$bindir/slot_failover_pre_promote"
for f in "$here"/extension/*; do
  install -m 644 "$f" "$extdir/$(basename "$f")"
done
echo "slot_failover @VERSION@ installed for $version:"
echo "  $pkglibdir/slot_failover.so"
echo "  $extdir/slot_failover.control and its SQL scripts"
echo "  $bindir/slot_failover_pre_promote"
