-- slot_failover 0.5.0 -> 0.6.0
--
-- 0.6.0 adds the function slot_failover.two_phase_points(): every logical slot's two_phase
-- point (two_phase_at on 15+, initial_consistent_point on 14), read from shared memory, which
-- pg_replication_slots does not show. Standbys' workers read it with the marked slots' rows,
-- carry it on their copies, and tell from it a slot that was dropped and created again under
-- the same name. A 0.6.0 standby of a 0.5.0 upstream reads it from the upstream's slot state
-- files instead, as before.
--
-- 0.6.0 also adds slot_failover.log_standby_snapshot(): a standby snapshot logged at once
-- (pg_log_standby_snapshot() of 16+, on every major, at most one per 200 ms), which standbys'
-- workers ask for while a new copy waits for its slot to move past its reservation; and
-- slot_failover.slot_rows(names): the rows of the slots named, from shared memory, which
-- standbys' workers read instead of pg_replication_slots, so that a move upstream costs the
-- same however many slots did not move; and slot_failover.slot_feed(seen, duration_ms,
-- delay_ms): the moves of marked slots as they happen, which standbys' workers read through
-- COPY on a connection of their own instead of running a query per move; and
-- slot_failover.held_from(names): since which WAL position the slots' consumers are held
-- back for the failover standbys, which standbys' workers ask before a copy becomes ready.

\echo Use "ALTER EXTENSION slot_failover UPDATE TO '0.6.0'" to load this file. \quit

CREATE FUNCTION slot_failover.two_phase_points() RETURNS TABLE (
	"slot_name" TEXT,  /* String */
	"two_phase_at" TEXT  /* Option < String > */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'two_phase_points_wrapper';

REVOKE ALL ON FUNCTION slot_failover.two_phase_points() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.two_phase_points()
    TO slot_failover_admin, pg_monitor;

CREATE FUNCTION slot_failover.log_standby_snapshot() RETURNS TEXT /* Option < String > */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'log_standby_snapshot_wrapper';

CREATE FUNCTION slot_failover.held_from(
	"names" TEXT[] /* alloc::vec::Vec<alloc::string::String> */
) RETURNS TABLE (
	"slot_name" TEXT,  /* alloc::string::String */
	"held_from" TEXT  /* core::option::Option<alloc::string::String> */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'held_from_wrapper';

REVOKE ALL ON FUNCTION slot_failover.held_from(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.held_from(text[])
    TO slot_failover_admin, pg_monitor;

REVOKE ALL ON FUNCTION slot_failover.log_standby_snapshot() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.log_standby_snapshot()
    TO slot_failover_admin, pg_monitor;

CREATE FUNCTION slot_failover.slot_rows(
	"names" TEXT[] /* alloc::vec::Vec<alloc::string::String> */
) RETURNS TABLE (
	"slot_name" TEXT,  /* core::option::Option<alloc::string::String> */
	"slot_type" TEXT,  /* core::option::Option<alloc::string::String> */
	"database" TEXT,  /* core::option::Option<alloc::string::String> */
	"plugin" TEXT,  /* core::option::Option<alloc::string::String> */
	"restart_lsn" TEXT,  /* core::option::Option<alloc::string::String> */
	"confirmed_flush" TEXT,  /* core::option::Option<alloc::string::String> */
	"catalog_xmin" TEXT,  /* core::option::Option<alloc::string::String> */
	"two_phase" TEXT,  /* core::option::Option<alloc::string::String> */
	"invalidated" TEXT,  /* core::option::Option<alloc::string::String> */
	"temporary" TEXT,  /* core::option::Option<alloc::string::String> */
	"failover" TEXT,  /* core::option::Option<alloc::string::String> */
	"two_phase_at" TEXT  /* core::option::Option<alloc::string::String> */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'slot_rows_wrapper';

REVOKE ALL ON FUNCTION slot_failover.slot_rows(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.slot_rows(text[])
    TO slot_failover_admin, pg_monitor;

CREATE FUNCTION slot_failover.slot_feed(
	"seen" bigint, /* i64 */
	"duration_ms" INT, /* i32 */
	"delay_ms" INT /* i32 */
) RETURNS SETOF TEXT /* alloc::string::String */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'slot_feed_wrapper';

REVOKE ALL ON FUNCTION slot_failover.slot_feed(bigint, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.slot_feed(bigint, integer, integer)
    TO slot_failover_admin, pg_monitor;

CREATE OR REPLACE VIEW slot_failover.standbys AS
SELECT n.slot_name,
       n.source,
       CASE WHEN n.ignored THEN 'ignored'
            WHEN s.slot_name IS NULL THEN 'missing'
            WHEN s.slot_type OPERATOR(pg_catalog.<>) 'physical' THEN 'not_physical'
            WHEN s.wal_status OPERATOR(pg_catalog.=) 'lost' THEN 'invalidated'
            WHEN NOT s.active THEN 'inactive'
            ELSE 'streaming' END AS state,
       CASE WHEN n.ignored AND n.slot_name OPERATOR(pg_catalog.=) pg_catalog.current_setting('primary_slot_name')
                THEN 'this server''s own primary_slot_name: never waited for'
            WHEN n.ignored THEN 'this server''s own slot (slot_failover.own_slot_name): never waited for'
            WHEN s.slot_name IS NULL THEN 'no such slot on this server: marked slots wait for it'
            WHEN s.slot_type OPERATOR(pg_catalog.<>) 'physical' THEN 'a logical slot cannot confirm anything: marked slots wait for it'
            WHEN s.wal_status OPERATOR(pg_catalog.=) 'lost' THEN 'invalidated: marked slots wait for it'
            WHEN NOT s.active THEN 'no standby is streaming from it'
            END AS detail,
       s.restart_lsn AS flushed_lsn,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() AND s.restart_lsn IS NOT NULL
            THEN (pg_catalog.pg_current_wal_lsn() OPERATOR(pg_catalog.-) s.restart_lsn)::pg_catalog.int8
            END AS behind_bytes
  FROM slot_failover.standby_names() AS n
  LEFT JOIN pg_catalog.pg_replication_slots AS s
    ON s.slot_name OPERATOR(pg_catalog.=) n.slot_name::pg_catalog.name;

CREATE OR REPLACE VIEW slot_failover.status AS
SELECT m.slot_name,
       s.slot_type::pg_catalog.text AS slot_type,
       s.database::pg_catalog.text AS database,
       s.plugin::pg_catalog.text AS plugin,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN
                CASE WHEN s.slot_name IS NULL THEN 'slot_missing'
                     WHEN s.wal_status OPERATOR(pg_catalog.=) 'lost' THEN 'invalidated'
                     ELSE 'primary' END
            WHEN w.state IS NULL THEN 'not_synced'
            WHEN i.invalidated AND w.state OPERATOR(pg_catalog.<>) 'skipped' THEN 'invalidated'
            WHEN w.state OPERATOR(pg_catalog.=) ANY ('{skipped,native_sync}') THEN w.state
            WHEN w.state OPERATOR(pg_catalog.=) 'ready' AND (s.slot_name IS NULL OR s.temporary)
                THEN 'not_synced'
            ELSE w.state END AS state,
       -- The state column as a boolean for monitoring: NULL on a primary (no copy to judge).
       -- A skipped slot (this standby's own physical slot upstream) needs no copy; one left to
       -- PostgreSQL's slot sync (native_sync) is ready once that has made it persistent. A
       -- copy invalidated here since the worker's last round (its upstream unreachable, say)
       -- is not, whatever that round said.
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN
                COALESCE((w.state OPERATOR(pg_catalog.=) ANY ('{ready,native_sync}')
                          AND s.slot_name IS NOT NULL AND NOT s.temporary
                          AND NOT COALESCE(i.invalidated, false))
                         OR w.state OPERATOR(pg_catalog.=) 'skipped', false)
       END AS ready,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN
                CASE WHEN s.slot_name IS NULL THEN 'the marked slot does not exist on this server'
                     ELSE (SELECT pg_catalog.format('failover standby slot %I is ignored here: it is this server''s own %s', n.slot_name,
                                                    CASE WHEN n.slot_name OPERATOR(pg_catalog.=) pg_catalog.current_setting('primary_slot_name')
                                                         THEN 'primary_slot_name' ELSE 'slot (slot_failover.own_slot_name)' END)
                             FROM slot_failover.standby_names() AS n WHERE n.ignored LIMIT 1) END
            WHEN w.state IS NULL THEN 'the worker has not synchronized this slot yet'
            WHEN i.invalidated AND w.state OPERATOR(pg_catalog.<>) 'skipped'
                THEN pg_catalog.format('the copy was invalidated on this standby (%s): it cannot be decoded from after a promotion; the next round that reaches the upstream drops it and makes it again',
                                       COALESCE(pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'invalidation_reason', 'wal_status lost'))
            ELSE w.detail END AS detail,
       s.restart_lsn,
       s.confirmed_flush_lsn,
       s.catalog_xmin,
       w.upstream_confirmed_flush_lsn,
       -- The copy's position is read now, the upstream's at the worker's last round: a round
       -- that just moved the copy can put it past the published value; that is no lag.
       CASE WHEN w.upstream_confirmed_flush_lsn OPERATOR(pg_catalog.>=) s.confirmed_flush_lsn
            THEN (w.upstream_confirmed_flush_lsn OPERATOR(pg_catalog.-) s.confirmed_flush_lsn)::pg_catalog.int8
            WHEN w.upstream_confirmed_flush_lsn OPERATOR(pg_catalog.<) s.confirmed_flush_lsn THEN 0
       END AS lag_bytes,
       ((CASE WHEN pg_catalog.pg_is_in_recovery()
              THEN GREATEST(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn())
              ELSE pg_catalog.pg_current_wal_lsn() END) OPERATOR(pg_catalog.-) s.restart_lsn)::pg_catalog.int8
           AS retained_wal_bytes,
       w.last_sync_at,
       h.held_since,
       (h.held_lsn OPERATOR(pg_catalog.-) h.confirmed_lsn)::pg_catalog.int8 AS held_back_bytes,
       h.held_by
  FROM slot_failover.marked_slots AS m
  LEFT JOIN LATERAL (SELECT x.held_since, x.held_lsn::pg_catalog.pg_lsn AS held_lsn,
                            x.confirmed_lsn::pg_catalog.pg_lsn AS confirmed_lsn, x.held_by
                       FROM slot_failover.holds() AS x
                      WHERE x.slot_name OPERATOR(pg_catalog.=) m.slot_name::pg_catalog.text
                      ORDER BY x.held_since LIMIT 1) AS h ON true
  LEFT JOIN pg_catalog.pg_replication_slots AS s
    ON s.slot_name OPERATOR(pg_catalog.=) m.slot_name
  LEFT JOIN (SELECT r.slot_name, r.state, r.detail,
                    r.upstream_confirmed_flush_lsn::pg_catalog.pg_lsn AS upstream_confirmed_flush_lsn,
                    r.last_sync_at
               FROM slot_failover.worker_state() AS r
              WHERE pg_catalog.pg_is_in_recovery()) AS w
    ON w.slot_name OPERATOR(pg_catalog.=) m.slot_name::pg_catalog.text
  -- The slot here invalidated: its WAL gone (every major), or, 16+, its rows removed or the
  -- upstream's wal_level lowered (a slot a process holds then still shows its restart_lsn).
  LEFT JOIN LATERAL (SELECT s.wal_status OPERATOR(pg_catalog.=) 'lost'
                            OR pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'invalidation_reason' IS NOT NULL
                            OR COALESCE((pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'conflicting')::pg_catalog.bool, false)
                            AS invalidated) AS i ON true;
