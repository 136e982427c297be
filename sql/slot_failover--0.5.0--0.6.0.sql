-- slot_failover 0.5.0 -> 0.6.0
--
-- 0.6.0 adds the function slot_failover.two_phase_points(): every logical slot's two_phase
-- point (two_phase_at on 15+, initial_consistent_point on 14), read from shared memory, which
-- pg_replication_slots does not show. Standbys' workers read it with the marked slots' rows,
-- carry it on their copies, and tell from it a slot that was dropped and created again under
-- the same name. A 0.6.0 standby of a 0.5.0 upstream reads it from the upstream's slot state
-- files instead, as before. Nothing else changes.

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
