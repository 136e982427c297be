-- slot_failover 0.3.0 -> 0.4.0
--
-- Major upgrades with pg_upgrade: a mark now records what re-creating its slot needs (type,
-- plugin, database, two_phase), filled in here from the slots that exist; upgrade_check()
-- says when every marked slot has been consumed up to the end of WAL, and restore_slots()
-- re-creates the marked slots after pg_upgrade. upgrade_check() refreshes the recorded
-- details, so members of slot_failover_admin may now UPDATE the marks.

\echo Use "ALTER EXTENSION slot_failover UPDATE TO '0.4.0'" to load this file. \quit

ALTER TABLE slot_failover.marked_slots
    ADD COLUMN slot_type text,
    ADD COLUMN plugin name,
    ADD COLUMN database name,
    ADD COLUMN two_phase boolean,
    ADD COLUMN details_at timestamptz;
COMMENT ON COLUMN slot_failover.marked_slots.details_at IS
    'When slot_type, plugin, database and two_phase were last read from the slot (by enable() or upgrade_check()); restore_slots() re-creates the slot from them after pg_upgrade';
GRANT UPDATE ON slot_failover.marked_slots TO slot_failover_admin;

UPDATE slot_failover.marked_slots AS m
   SET slot_type = s.slot_type, plugin = s.plugin, database = s.database,
       two_phase = s.two_phase, details_at = pg_catalog.now()
  FROM pg_catalog.pg_replication_slots AS s
 WHERE s.slot_name OPERATOR(pg_catalog.=) m.slot_name
   AND NOT s.temporary;

CREATE FUNCTION slot_failover.upgrade_check() RETURNS TABLE (
	"slot_name" TEXT,  /* String */
	"slot_type" TEXT,  /* Option < String > */
	"database" TEXT,  /* Option < String > */
	"plugin" TEXT,  /* Option < String > */
	"two_phase" bool,  /* Option < bool > */
	"unconsumed_bytes" bigint,  /* Option < i64 > */
	"safe" bool,  /* bool */
	"reason" TEXT  /* String */
)
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'upgrade_check_wrapper';

CREATE FUNCTION slot_failover.restore_slots() RETURNS TABLE (
	"slot_name" TEXT,  /* String */
	"slot_type" TEXT,  /* Option < String > */
	"database" TEXT,  /* Option < String > */
	"plugin" TEXT,  /* Option < String > */
	"two_phase" bool,  /* Option < bool > */
	"action" TEXT,  /* String */
	"reason" TEXT  /* String */
)
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'restore_slots_wrapper';

REVOKE ALL ON FUNCTION slot_failover.upgrade_check(), slot_failover.restore_slots() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.upgrade_check(), slot_failover.restore_slots()
    TO slot_failover_admin;
