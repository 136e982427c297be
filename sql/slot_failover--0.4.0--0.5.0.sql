-- slot_failover 0.4.0 -> 0.5.0
--
-- 0.5.0 adds the function slot_failover.marked_slots_digest(), which standbys' workers call
-- on their upstream once per full round: a digest of every marked slot's row, so that the rows
-- are read again only when they changed (with many marked slots, reading them every naptime
-- was most of what an idle standby cost its upstream). A 0.5.0 standby of a 0.4.0 upstream
-- reads the rows every round, as before. Nothing else changes.

\echo Use "ALTER EXTENSION slot_failover UPDATE TO '0.5.0'" to load this file. \quit

CREATE FUNCTION slot_failover.marked_slots_digest() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'marked_slots_digest_wrapper';

REVOKE ALL ON FUNCTION slot_failover.marked_slots_digest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.marked_slots_digest()
    TO slot_failover_admin, pg_monitor;
