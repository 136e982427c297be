# slot_failover: the conventional entry points, as PGXS extensions have them, for packagers and
# `pgxn install`. People use ./run (README.md), which also prepares the machine.
#
#   make [PG_CONFIG=...]               build the extension for the PostgreSQL that pg_config
#                                      names (its major picks the Cargo feature)
#   make install [PG_CONFIG=...]       install the library, the SQL files and the promotion gate
#                                      slot_failover_pre_promote there (as the owner of that
#                                      installation)
#   make uninstall [PG_CONFIG=...]     remove them again
#   make installcheck [PG_CONFIG=...]  the multi-node tests against that installation (they start
#                                      their own servers; as root they run them as `postgres`)
#
# Needs Rust and cargo-pgrx 0.18.0 (`cargo install --locked cargo-pgrx --version 0.18.0`). When
# pgrx's configuration ($PGRX_HOME/config.toml, default ~/.pgrx) has no pg_config for this
# major yet, `cargo pgrx init --pgNN $PG_CONFIG` adds it (it downloads nothing, and keeps the
# other majors). PROFILE=debug builds without optimizations.

PG_CONFIG ?= pg_config
PROFILE ?= release
PGRX_VERSION := 0.18.0
PG_CONFIG_PATH := $(shell command -v $(PG_CONFIG) 2>/dev/null || echo $(PG_CONFIG))
PGRX_CONFIG := $(or $(PGRX_HOME),$(HOME)/.pgrx)/config.toml

MAJOR := $(shell $(PG_CONFIG) --version 2>/dev/null | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
PKGLIBDIR := $(shell $(PG_CONFIG) --pkglibdir 2>/dev/null)
SHAREDIR := $(shell $(PG_CONFIG) --sharedir 2>/dev/null)
BINDIR := $(shell $(PG_CONFIG) --bindir 2>/dev/null)
ifeq ($(PROFILE),release)
RELEASE := --release
endif
FEATURES := --no-default-features --features pg$(MAJOR)

.PHONY: all install uninstall installcheck clean check-tools pgrx-config

all: check-tools pgrx-config
	cargo build --lib $(RELEASE) $(FEATURES)

install: check-tools pgrx-config
	cargo pgrx install $(RELEASE) --pg-config $(PG_CONFIG_PATH) $(FEATURES)
	install -m 755 packaging/slot_failover_pre_promote $(BINDIR)/slot_failover_pre_promote

uninstall:
	rm -f $(PKGLIBDIR)/slot_failover.so $(SHAREDIR)/extension/slot_failover.control \
	    $(SHAREDIR)/extension/slot_failover--*.sql $(BINDIR)/slot_failover_pre_promote

installcheck:
	SLOT_FAILOVER_PG_CONFIG=$(PG_CONFIG) cargo test -p pg_test --test '*'

clean:
	cargo clean -p slot_failover

check-tools:
	@case "$(MAJOR)" in 14|15|16|17|18) ;; \
	  *) echo "make: PG_CONFIG=$(PG_CONFIG) is not the pg_config of PostgreSQL 14 to 18" >&2; exit 1 ;; esac
	@cargo pgrx --version 2>/dev/null | grep -qF "$(PGRX_VERSION)" || \
	  { echo "make: cargo-pgrx $(PGRX_VERSION) is needed: cargo install --locked cargo-pgrx --version $(PGRX_VERSION)" >&2; exit 1; }

pgrx-config:
	@grep -qs '^pg$(MAJOR) = ' "$(PGRX_CONFIG)" || cargo pgrx init --pg$(MAJOR) $(PG_CONFIG_PATH)
