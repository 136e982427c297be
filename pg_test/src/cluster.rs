//! One PostgreSQL server for a test, with an API that reads like PostgreSQL's own
//! `PostgreSQL::Test::Cluster`.
//!
//! Each cluster lives in its own temporary directory (`$TMPDIR/sf_<name>_XXXXXX`): the data
//! directory `data/`, the server log `server.log`, base backups under `backup/`, and the
//! server's Unix socket. Tests connect over that socket; the server also listens on
//! 127.0.0.1 on a port leased from [`crate::port`].
//!
//! Dropping a cluster stops its server (`immediate`), even when the test panicked. When the
//! thread is panicking, or `SLOT_FAILOVER_KEEP` is set, the directory is kept and the end of the
//! server log is printed, so a failure can be read after the fact.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::{Client, Config, NoTls, SimpleQueryMessage};
use regex::Regex;

use crate::Lsn;
use crate::install::{PgInstall, as_server_user, give_to_server_user};
use crate::port::{self, PortLease};
use crate::process;
use crate::wait::{self, Check};

/// What a cluster is set up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Streaming {
    /// A stand-alone server (wal_level replica, no senders): a subscriber, say.
    #[default]
    None,
    /// Can feed physical standbys.
    Physical,
    /// Can feed physical standbys and logical decoding (wal_level logical).
    Logical,
}

/// Options of [`Cluster::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub allows_streaming: Streaming,
    /// Extra arguments to initdb.
    pub extra: Vec<String>,
    /// Run this installation instead of the one named by the environment (a package
    /// installed into a private copy, say).
    pub install: Option<&'static PgInstall>,
}

impl InitOptions {
    pub fn logical() -> InitOptions {
        InitOptions {
            allows_streaming: Streaming::Logical,
            ..Default::default()
        }
    }
}

/// Options of [`Cluster::init_from_backup`].
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Stream from the backed-up cluster (primary_conninfo, standby.signal).
    pub has_streaming: bool,
    /// Use this physical slot on the upstream (primary_slot_name).
    pub primary_slot: Option<String>,
}

impl BackupOptions {
    /// A streaming standby using `slot` on its upstream.
    pub fn standby(slot: &str) -> BackupOptions {
        BackupOptions {
            has_streaming: true,
            primary_slot: Some(slot.to_string()),
        }
    }
}

/// `pg_ctl stop` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Which WAL position [`Cluster::lsn`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsnMode {
    Insert,
    Write,
    Flush,
    Receive,
    Replay,
}

/// What [`Cluster::psql`] returns: like psql's exit code, output and error output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsqlOutput {
    /// 0 on success, 2 when the connection failed, 3 when a statement failed (psql with
    /// ON_ERROR_STOP).
    pub rc: i32,
    /// Rows of every statement, one per line, columns separated by `|`, NULL as empty (psql -XAt).
    pub stdout: String,
    /// Notices and the error, as psql prints them (`ERROR:  ...`, `DETAIL:  ...`, `HINT:  ...`).
    pub stderr: String,
    /// SQLSTATE of the error, if a statement failed.
    pub sqlstate: Option<String>,
}

/// One PostgreSQL server for a test.
pub struct Cluster {
    name: String,
    install: &'static PgInstall,
    dir: Option<tempfile::TempDir>,
    base: PathBuf,
    lease: PortLease,
    running: bool,
}

impl AsRef<str> for Cluster {
    /// A cluster's name is also its `application_name` upstream, so a cluster can be passed
    /// wherever a standby's name is expected (see [`Cluster::wait_for_catchup`]).
    fn as_ref(&self) -> &str {
        &self.name
    }
}

fn check_output(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: failed ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Quote a value for postgresql.conf.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl Cluster {
    fn new_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "cluster names are [A-Za-z0-9_]+ (they become application_name), got {name:?}"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("sf_{name}_"))
            .tempdir()
            .expect("create a temporary directory");
        let base = dir.path().to_path_buf();
        give_to_server_user(&base);
        (dir, base)
    }

    /// A new, stopped cluster from initdb, configured for tests (fsync off, small, logging to
    /// `server.log`) and for `opts.allows_streaming`.
    pub fn init(name: &str, opts: InitOptions) -> Cluster {
        let install = opts.install.unwrap_or_else(PgInstall::from_env);
        let (dir, base) = Cluster::new_dir(name);
        let cluster = Cluster {
            name: name.to_string(),
            install,
            dir: Some(dir),
            base,
            lease: port::reserve(),
            running: false,
        };
        let mut initdb = install.command("initdb");
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-N",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg("-D")
            .arg(cluster.data_dir())
            .args(&opts.extra);
        check_output(&format!("initdb for {name}"), initdb.output());

        let mut conf = String::new();
        conf.push_str("\n# pg_test harness\n");
        conf.push_str("fsync = off\nshared_buffers = 16MB\nmax_connections = 30\n");
        conf.push_str("log_line_prefix = '%m [%p] %q%a '\n");
        conf.push_str("max_wal_size = 256MB\n");
        match opts.allows_streaming {
            Streaming::None => conf.push_str("wal_level = replica\nmax_wal_senders = 5\n"),
            Streaming::Physical | Streaming::Logical => {
                let level = if opts.allows_streaming == Streaming::Logical {
                    "logical"
                } else {
                    "replica"
                };
                let _ = writeln!(conf, "wal_level = {level}");
                conf.push_str("max_wal_senders = 10\nmax_replication_slots = 10\n");
                conf.push_str("wal_log_hints = on\nhot_standby = on\n");
                conf.push_str("wal_sender_timeout = 60s\nwal_receiver_status_interval = 1s\n");
            }
        }
        cluster.append_conf("postgresql.conf", &conf);
        cluster.append_conf("postgresql.conf", &cluster.location_conf());
        cluster
    }

    /// The settings that tie a data directory to this cluster (port and socket directory).
    fn location_conf(&self) -> String {
        format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = {}\n",
            self.port(),
            conf_quote(&self.base.to_string_lossy())
        )
    }

    /// A new, stopped cluster made from `root`'s base backup `backup_name` (see [`backup`]).
    /// With `has_streaming` it is a standby of `root` (application_name = `name`).
    ///
    /// [`backup`]: Cluster::backup
    pub fn init_from_backup(
        root: &Cluster,
        backup_name: &str,
        name: &str,
        opts: BackupOptions,
    ) -> Cluster {
        let backup = root.backup_dir().join(backup_name);
        assert!(
            backup.is_dir(),
            "no backup {backup_name:?} of {}",
            root.name
        );
        let (dir, base) = Cluster::new_dir(name);
        let cluster = Cluster {
            name: name.to_string(),
            install: root.install,
            dir: Some(dir),
            base,
            lease: port::reserve(),
            running: false,
        };
        // The copy must belong to the server user: copy as that user.
        let mut cp = as_server_user("cp");
        cp.arg("-a").arg(&backup).arg(cluster.data_dir());
        check_output(&format!("copy backup {backup_name} to {name}"), cp.output());
        fs::set_permissions(
            cluster.data_dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod data directory");

        let mut conf = cluster.location_conf();
        if opts.has_streaming {
            let conninfo = format!("{} application_name={name}", root.connstr("postgres"));
            let _ = writeln!(conf, "primary_conninfo = {}", conf_quote(&conninfo));
            if let Some(slot) = &opts.primary_slot {
                let _ = writeln!(conf, "primary_slot_name = {}", conf_quote(slot));
            }
        }
        cluster.append_conf("postgresql.conf", &conf);
        if opts.has_streaming {
            cluster.append_conf("standby.signal", "");
        }
        cluster
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.lease.port
    }

    pub fn install(&self) -> &'static PgInstall {
        self.install
    }

    /// The cluster's directory (socket directory too).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.base.join("server.log")
    }

    fn backup_dir(&self) -> PathBuf {
        self.base.join("backup")
    }

    /// A libpq connection string for database `db` (over the Unix socket).
    pub fn connstr(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.base.display(),
            self.port()
        )
    }

    /// Append `text` to a file of the data directory (created when missing).
    pub fn append_conf(&self, file: &str, text: &str) {
        let path = self.data_dir().join(file);
        let existed = path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(text.as_bytes()).expect("write config");
        if !text.is_empty() && !text.ends_with('\n') {
            f.write_all(b"\n").expect("write config");
        }
        if !existed {
            give_to_server_user(&path);
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.install.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(args);
        cmd.output().expect("run pg_ctl")
    }

    /// Start the server and wait until it accepts connections.
    pub fn start(&mut self) {
        assert!(!self.running, "{} is already running", self.name);
        let log = self.log_path().to_string_lossy().into_owned();
        let out = self.pg_ctl(&["-w", "-t", "180", "-l", &log, "start"]);
        if !out.status.success() {
            panic!(
                "{}: pg_ctl start failed: {}{}\n--- end of server log ---\n{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(60)
            );
        }
        self.running = true;
    }

    /// Stop the server (waiting until it is down).
    pub fn stop(&mut self, mode: StopMode) {
        assert!(self.running, "{} is not running", self.name);
        let out = self.pg_ctl(&["-w", "-t", "180", "-m", mode.as_str(), "stop"]);
        if !out.status.success() {
            panic!(
                "{}: pg_ctl stop -m {} failed: {}{}",
                self.name,
                mode.as_str(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
    }

    /// Stop (fast) and start again.
    pub fn restart(&mut self) {
        self.stop(StopMode::Fast);
        self.start();
    }

    /// Ask the server to re-read its configuration files.
    pub fn reload(&self) {
        self.safe_psql("postgres", "SELECT pg_catalog.pg_reload_conf()");
    }

    /// Set parameter `name` to `value` in postgresql.conf, reload, and wait until a new session
    /// shows it (`SHOW name` returns `value`).
    pub fn set_and_reload(&self, name: &str, value: &str) {
        self.append_conf(
            "postgresql.conf",
            &format!("{name} = {}", conf_quote(value)),
        );
        self.reload();
        self.poll_query_until("postgres", &format!("SHOW {name}"), value);
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Note that the server went away by other means (a test killed the postmaster).
    pub fn mark_stopped(&mut self) {
        self.running = false;
    }

    /// kill -9 this server: SIGKILL to the postmaster and every one of its children at once
    /// (a machine losing power, as far as this server can tell), then wait until all of them
    /// are gone, reaped included (PostgreSQL takes a zombie's pid in its lock files for a
    /// live postmaster). The cluster counts as stopped; `start` runs crash recovery.
    pub fn kill9(&mut self) {
        process::kill9_postmaster(self.postmaster_pid(), &self.name);
        self.running = false;
    }

    /// The postmaster's process id, from postmaster.pid.
    pub fn postmaster_pid(&self) -> i32 {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .unwrap_or_else(|e| panic!("{}: read postmaster.pid: {e}", self.name));
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid in postmaster.pid")
    }

    /// Promote a standby and wait until it accepts writes.
    pub fn promote(&self) {
        let out = self.pg_ctl(&["-w", "-t", "180", "promote"]);
        if !out.status.success() {
            panic!(
                "{}: pg_ctl promote failed: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.poll_query_until("postgres", "SELECT NOT pg_catalog.pg_is_in_recovery()", "t");
    }

    /// Rewind this stopped cluster (a former primary) to `source` with pg_rewind, then make it
    /// a standby of `source` streaming through physical slot `slot`. pg_rewind copies the
    /// source's configuration files, so this cluster's own location (port, socket directory)
    /// is written again after them.
    pub fn rewind_to_standby_of(&mut self, source: &Cluster, slot: &str) {
        assert!(!self.running, "{}: stop it before pg_rewind", self.name);
        // pg_rewind reads the source's timeline from its control file, which a promoted server
        // updates only at its first checkpoint (before 16): without one, a source promoted a
        // moment ago still says its old timeline, and the rewound server cannot follow it
        // ("requested timeline N does not contain minimum recovery point"). PostgreSQL's own
        // RewindTest.pm checkpoints for the same reason.
        source.safe_psql("postgres", "CHECKPOINT");
        let mut cmd = self.install.command("pg_rewind");
        cmd.arg("--target-pgdata")
            .arg(self.data_dir())
            .arg(format!("--source-server={}", source.connstr("postgres")))
            .arg("--no-sync");
        check_output(&format!("{}: pg_rewind", self.name), cmd.output());
        let mut conf = self.location_conf();
        let conninfo = format!(
            "{} application_name={}",
            source.connstr("postgres"),
            self.name
        );
        let _ = writeln!(conf, "primary_conninfo = {}", conf_quote(&conninfo));
        let _ = writeln!(conf, "primary_slot_name = {}", conf_quote(slot));
        self.append_conf("postgresql.conf", &conf);
        self.append_conf("standby.signal", "");
    }

    /// Upgrade this stopped cluster with pg_upgrade to `install` (a newer major): a new
    /// cluster `name` is made with initdb (logical streaming settings, as [`Cluster::init`]),
    /// then pg_upgrade copies this cluster into it. Returns the new cluster, stopped; the old
    /// one is left as pg_upgrade leaves it (copy mode: untouched).
    pub fn pg_upgrade(&self, name: &str, install: &'static PgInstall) -> Cluster {
        assert!(!self.running, "{}: stop it before pg_upgrade", self.name);
        // pg_upgrade needs the same data checksum setting on both sides; initdb's default
        // changed in 18 (on), so say it explicitly.
        let control = self
            .install
            .command("pg_controldata")
            .arg(self.data_dir())
            .output()
            .expect("run pg_controldata");
        let control = String::from_utf8_lossy(&control.stdout);
        let checksums = control
            .lines()
            .find_map(|l| l.strip_prefix("Data page checksum version:"))
            .map(|v| v.trim() != "0")
            .unwrap_or_else(|| panic!("no checksum line in pg_controldata's output:\n{control}"));
        let checksum_arg = if checksums {
            "--data-checksums"
        } else if install.major >= 18 {
            "--no-data-checksums"
        } else {
            ""
        };
        let new = Cluster::init(
            name,
            InitOptions {
                install: Some(install),
                extra: [checksum_arg]
                    .into_iter()
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect(),
                ..InitOptions::logical()
            },
        );
        let mut cmd = install.command("pg_upgrade");
        // pg_upgrade runs both majors' server programs: either may need its libraries.
        let libs =
            std::env::join_paths([&install.libdir, &self.install.libdir]).expect("library paths");
        cmd.env("LD_LIBRARY_PATH", libs)
            // Its logs, and the sockets of the servers it starts, go to the current directory.
            .current_dir(&new.base)
            .arg("--old-bindir")
            .arg(&self.install.bindir)
            .arg("--new-bindir")
            .arg(&install.bindir)
            .arg("--old-datadir")
            .arg(self.data_dir())
            .arg("--new-datadir")
            .arg(new.data_dir())
            .args(["--old-port", &self.port().to_string()])
            .args(["--new-port", &new.port().to_string()])
            .args(["--username", "postgres", "--no-sync"]);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("pg_upgrade: cannot run: {e}"));
        if !out.status.success() {
            // pg_upgrade says what failed on stdout and details it in files of its own.
            let mut details = String::new();
            for entry in walk_files(&new.base) {
                let file = entry.to_string_lossy().to_string();
                if file.ends_with(".txt") || file.ends_with(".log") {
                    let text = fs::read_to_string(&entry).unwrap_or_default();
                    let _ = writeln!(
                        details,
                        "--- {file} (last lines) ---\n{}",
                        last_lines(&text, 40)
                    );
                }
            }
            panic!(
                "pg_upgrade from {} to {name} failed ({})\nstdout:\n{}\nstderr:\n{}\n{details}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        new
    }

    /// Take a base backup named `name` (pg_basebackup, fast checkpoint, WAL streamed).
    pub fn backup(&self, name: &str) {
        let dir = self.backup_dir();
        if !dir.exists() {
            fs::create_dir(&dir).expect("create backup directory");
            give_to_server_user(&dir);
        }
        let mut cmd = self.install.command("pg_basebackup");
        cmd.arg("-D")
            .arg(dir.join(name))
            .arg("-h")
            .arg(&self.base)
            .args(["-p", &self.port().to_string(), "-U", "postgres"])
            .args(["-c", "fast", "-X", "stream", "--no-sync"]);
        check_output(
            &format!("{}: pg_basebackup {name}", self.name),
            cmd.output(),
        );
    }

    fn config(&self, db: &str) -> Config {
        let mut config = Config::new();
        config
            .host_path(&self.base)
            .port(self.port())
            .user("postgres")
            .dbname(db)
            .application_name("pg_test")
            .connect_timeout(Duration::from_secs(30));
        config
    }

    /// A client connection to database `db`.
    pub fn connect(&self, db: &str) -> Client {
        self.config(db)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("{}: connect to {db}: {e}", self.name))
    }

    /// Run `sql` (one or more statements) like `psql -XAt -v ON_ERROR_STOP=1 -f -`: each
    /// statement in its own transaction unless the script says BEGIN, all in one session.
    /// Never panics.
    pub fn psql(&self, db: &str, sql: &str) -> PsqlOutput {
        run_script(self.config(db), sql)
    }

    /// [`psql`](Cluster::psql) in a thread of its own, for a statement that is expected to
    /// block; join the handle for its output.
    pub fn background_psql(&self, db: &str, sql: &str) -> std::thread::JoinHandle<PsqlOutput> {
        let config = self.config(db);
        let sql = sql.to_string();
        std::thread::spawn(move || run_script(config, &sql))
    }

    /// Run `sql` and return its output; panic (failing the test) if anything fails.
    pub fn safe_psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db, sql);
        if out.rc != 0 {
            panic!("{}: query failed in {db}: {sql}\n{}", self.name, out.stderr);
        }
        out.stdout
    }

    /// Wait until `sql` returns `expected` (psql text form: `t`, `f`, `a|b`, ...).
    /// Errors (a server restarting, say) count as "not yet". Panics on timeout.
    pub fn poll_query_until(&self, db: &str, sql: &str, expected: &str) {
        if let Err(e) = self.try_poll_query_until(db, sql, expected, wait::default_timeout()) {
            panic!("{}: {e}", self.name);
        }
    }

    /// [`poll_query_until`](Cluster::poll_query_until) with its own timeout, returning the
    /// timeout instead of panicking.
    pub fn try_poll_query_until(
        &self,
        db: &str,
        sql: &str,
        expected: &str,
        timeout: Duration,
    ) -> Result<(), wait::Timeout> {
        let what = format!("query on {} to return {expected:?}: {sql}", self.name);
        wait::until(&what, timeout, || {
            let out = self.psql(db, sql);
            if out.rc == 0 && out.stdout == expected {
                Check::Done(())
            } else if out.rc == 0 {
                Check::NotYet(format!("{:?}", out.stdout))
            } else {
                Check::NotYet(out.stderr.trim().to_string())
            }
        })
    }

    /// The current WAL position of the given kind (None where it does not apply, e.g. the
    /// receive position of a primary).
    pub fn lsn(&self, mode: LsnMode) -> Option<Lsn> {
        let f = match mode {
            LsnMode::Insert => "pg_current_wal_insert_lsn()",
            LsnMode::Write => "pg_current_wal_lsn()",
            LsnMode::Flush => "pg_current_wal_flush_lsn()",
            LsnMode::Receive => "pg_last_wal_receive_lsn()",
            LsnMode::Replay => "pg_last_wal_replay_lsn()",
        };
        let text = self.safe_psql("postgres", &format!("SELECT pg_catalog.{f}"));
        if text.is_empty() {
            None
        } else {
            Some(
                text.parse()
                    .unwrap_or_else(|e| panic!("{}: {e}", self.name)),
            )
        }
    }

    /// Wait until the standby or subscription `who` (its application_name; a [`Cluster`]
    /// works too) has replayed everything this server has written so far.
    pub fn wait_for_catchup(&self, who: impl AsRef<str>) {
        self.wait_for_catchup_mode(who, "replay", None);
    }

    /// Wait until `who` has reached `target` (default: this server's current WAL position) in
    /// `mode` (`sent`, `write`, `flush` or `replay`) according to pg_stat_replication here.
    pub fn wait_for_catchup_mode(&self, who: impl AsRef<str>, mode: &str, target: Option<Lsn>) {
        assert!(
            ["sent", "write", "flush", "replay"].contains(&mode),
            "bad catchup mode {mode}"
        );
        let who = who.as_ref();
        let target = target.unwrap_or_else(|| {
            let in_recovery = self.safe_psql("postgres", "SELECT pg_catalog.pg_is_in_recovery()");
            let mode = if in_recovery == "t" {
                LsnMode::Replay
            } else {
                LsnMode::Write
            };
            self.lsn(mode).expect("current WAL position")
        });
        let sql = format!(
            "SELECT '{target}'::pg_catalog.pg_lsn <= {mode}_lsn AND state = 'streaming'
               FROM pg_catalog.pg_stat_replication
              WHERE application_name = '{}'",
            who.replace('\'', "''")
        );
        self.poll_query_until("postgres", &sql, "t");
    }

    /// On a subscriber: wait until every table of every subscription is synchronized
    /// (pg_subscription_rel all `r` or `s`), then until `publisher` has sent everything to
    /// the subscription `application_name`. Right after CREATE SUBSCRIPTION the apply worker
    /// can be caught up while a table-sync worker still copies, so catch-up alone is not
    /// enough (PostgreSQL's TAP tests have the same helper).
    pub fn wait_for_subscription_sync(&self, publisher: &Cluster, application_name: &str) {
        self.poll_query_until(
            "postgres",
            "SELECT count(1) = 0 FROM pg_catalog.pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')",
            "t",
        );
        publisher.wait_for_catchup(application_name);
    }

    /// Wait until the server log, read from byte `offset` on, matches `pattern`. Returns the
    /// offset just past the match, for the next wait. Panics on timeout.
    pub fn wait_for_log(&self, pattern: &str, offset: u64) -> u64 {
        let re = Regex::new(pattern).unwrap_or_else(|e| panic!("bad regex {pattern:?}: {e}"));
        let what = format!(
            "{} server log to match /{pattern}/ after byte {offset}",
            self.name
        );
        let found = wait::until(&what, wait::default_timeout(), || {
            let text = self.log_from(offset);
            match re.find(&text) {
                Some(m) => Check::Done(offset + m.end() as u64),
                None => Check::NotYet(format!("{} new bytes", text.len())),
            }
        });
        found.unwrap_or_else(|e| panic!("{e}\n--- end of server log ---\n{}", self.log_tail(40)))
    }

    /// The current size of the server log: pass it to [`wait_for_log`](Cluster::wait_for_log)
    /// to look only at what comes next.
    pub fn log_position(&self) -> u64 {
        fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    /// The server log from byte `offset` on.
    pub fn log_from(&self, offset: u64) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = fs::File::open(self.log_path())
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&self.log_from(0), lines)
    }

    /// Decode from logical slot `slot` with pg_recvlogical up to `endpos`, returning what it
    /// printed. `options` are plugin options (`-o name=value`).
    pub fn pg_recvlogical_upto(
        &self,
        db: &str,
        slot: &str,
        endpos: Lsn,
        options: &[(&str, &str)],
    ) -> String {
        let mut cmd = self.install.command("pg_recvlogical");
        cmd.args([
            "-S",
            slot,
            "-d",
            &self.connstr(db),
            "--endpos",
            &endpos.to_string(),
        ])
        .args(["-f", "-", "--no-loop", "--start"]);
        for (name, value) in options {
            cmd.args(["-o", &format!("{name}={value}")]);
        }
        let out = check_output(
            &format!("{}: pg_recvlogical -S {slot}", self.name),
            cmd.output(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
            self.running = false;
        }
        let keep = std::env::var_os("SLOT_FAILOVER_KEEP").is_some();
        if (std::thread::panicking() || keep)
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!(
                "--- {} (PostgreSQL {}): kept {} ; last lines of {} ---\n{}\n--- end of {} log ---",
                self.name,
                self.install.major,
                path.display(),
                self.log_path().display(),
                self.log_tail(80),
                self.name
            );
        }
    }
}

/// The body of [`Cluster::psql`]: the statements of `sql`, one by one, in one session.
pub(crate) fn run_script(mut config: Config, sql: &str) -> PsqlOutput {
    let notices: Arc<Mutex<String>> = Arc::default();
    let sink = Arc::clone(&notices);
    config.notice_callback(move |notice| {
        let mut out = sink.lock().unwrap();
        let _ = writeln!(out, "{}:  {}", notice.severity(), notice.message());
    });
    let mut client = match config.connect(NoTls) {
        Ok(client) => client,
        Err(e) => {
            return PsqlOutput {
                rc: 2,
                stdout: String::new(),
                stderr: e.to_string(),
                sqlstate: None,
            };
        }
    };
    // Like `psql -f -`: each statement on its own (autocommit), stopping at the first error.
    let mut rows: Vec<String> = Vec::new();
    let mut failure = None;
    for statement in crate::statements::split(sql) {
        match client.simple_query(statement) {
            Ok(messages) => rows.extend(messages.iter().filter_map(|m| {
                match m {
                    SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).unwrap_or(""))
                            .collect::<Vec<_>>()
                            .join("|"),
                    ),
                    _ => None,
                }
            })),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(client);
    let mut stderr = notices.lock().unwrap().clone();
    let Some(e) = failure else {
        return PsqlOutput {
            rc: 0,
            stdout: rows.join("\n"),
            stderr,
            sqlstate: None,
        };
    };
    let sqlstate = e.code().map(|c| c.code().to_string());
    match e.as_db_error() {
        Some(db) => {
            let _ = writeln!(stderr, "{}:  {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                let _ = writeln!(stderr, "DETAIL:  {detail}");
            }
            if let Some(hint) = db.hint() {
                let _ = writeln!(stderr, "HINT:  {hint}");
            }
        }
        None => {
            let _ = writeln!(stderr, "{e}");
        }
    }
    PsqlOutput {
        rc: 3,
        stdout: rows.join("\n"),
        stderr,
        sqlstate,
    }
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// Every file below `dir`, depth first (unreadable directories are skipped).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}
