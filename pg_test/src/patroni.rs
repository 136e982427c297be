//! Patroni clusters for tests, run the way an operator runs them: one etcd member and Patroni
//! members on loopback ports, each member's YAML taken from the recipe in `docs/recipes.md`.
//!
//! ```no_run
//! use pg_test::patroni::Patroni;
//!
//! let cluster = Patroni::start(3, |_member, yaml| yaml);
//! let leader = cluster.leader();
//! leader.safe_psql("postgres", "SELECT 1");
//! cluster.switchover(leader.name(), "node2");
//! ```
//!
//! * **The recipe is the configuration.** [`recipe_yaml`] reads the `patroni.yml` block of
//!   `docs/recipes.md` and replaces what differs on this machine (ports, directories, the
//!   installation's binaries, quicker Patroni timings); every replacement must match, so a
//!   recipe edit that the tests no longer follow fails here instead of drifting apart. The SQL
//!   block is read the same way ([`recipe_sql`]).
//! * **Processes.** etcd and Patroni run as the server user (initdb refuses root). Patroni starts
//!   PostgreSQL detached (its parent is not Patroni), so stopping a member means SIGTERM to
//!   Patroni and waiting for both Patroni and the postmaster; a test that kills a member kills
//!   both (without a watchdog nothing else fences it). Everything is stopped when the cluster is
//!   dropped, and the directories are kept when the test panicked or `SLOT_FAILOVER_KEEP` is set.
//! * **Waiting.** Every wait is on a condition: Patroni's REST API (`GET /patroni`: `role`,
//!   `state`, `replication_state`) and the servers themselves (`pg_is_in_recovery()`), never on
//!   the leader key alone: while `pre_promote` runs a member holds the key but is not promoted.
//! * **Tools.** Patroni's venv and etcd come from `./run setup` (`setup_patroni`); the venv is
//!   `$SLOT_FAILOVER_TOOLS/patroni-venv`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postgres::Config;

use crate::cluster::{PsqlOutput, run_script};
use crate::install::{PgInstall, give_to_server_user, server_user};
use crate::port::{self, PortLease};
use crate::process;
use crate::wait::{self, Check};

/// The recipe's passwords (the test uses them as they are).
pub const SUPERUSER_PASSWORD: &str = "change-me-superuser";

/// Where Patroni's venv is: `$SLOT_FAILOVER_TOOLS/patroni-venv` (`./run` exports it).
pub fn patroni_venv() -> PathBuf {
    let tools = std::env::var_os("SLOT_FAILOVER_TOOLS").map_or_else(
        || PathBuf::from("/var/cache/slot_failover/tools"),
        PathBuf::from,
    );
    let venv = tools.join("patroni-venv");
    assert!(
        venv.join("bin/patroni").is_file(),
        "no Patroni in {} (./run setup installs it; SLOT_FAILOVER_TOOLS names the tools directory)",
        venv.display()
    );
    venv
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The fenced block of `docs/recipes.md` that follows the marker comment `<!-- {marker}`.
fn recipe_block(marker: &str) -> String {
    let path = project_root().join("docs/recipes.md");
    let text = fs::read_to_string(&path).expect("read docs/recipes.md");
    let start = text
        .find(&format!("<!-- {marker}"))
        .unwrap_or_else(|| panic!("no <!-- {marker} marker in docs/recipes.md"));
    let rest = &text[start..];
    let open = rest.find("```").expect("a fenced block after the marker");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("\n```").expect("the end of the fenced block");
    body[..close + 1].to_string()
}

/// The recipe's SQL for the leader (the `patroni.sql` block), statement by statement.
pub fn recipe_sql() -> String {
    recipe_block("patroni.sql")
}

/// Replace `from` by `to` in `text`; `from` must occur.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "docs/recipes.md's patroni.yml no longer contains {from:?}: update pg_test/src/patroni.rs with it"
    );
    text.replace(from, to)
}

/// One etcd member on two loopback ports, with its own data directory.
pub struct Etcd {
    dir: Option<tempfile::TempDir>,
    client: PortLease,
    _peer: PortLease,
    child: Child,
}

impl Etcd {
    /// Start etcd and wait until it answers `/health`.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("sf_etcd_")
            .tempdir()
            .expect("create etcd's directory");
        give_to_server_user(dir.path());
        let (client, peer) = (port::reserve(), port::reserve());
        let client_url = format!("http://127.0.0.1:{}", client.port);
        let peer_url = format!("http://127.0.0.1:{}", peer.port);
        let log = File::create(dir.path().join("etcd.log")).expect("etcd.log");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "e1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd.log"))
            .stderr(log);
        // etcd reads ETCD_* variables: none of the caller's may leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        as_server_user(&mut cmd, dir.path());
        let child = cmd
            .spawn()
            .expect("start etcd (./run setup installs etcd-server)");
        let etcd = Etcd {
            dir: Some(dir),
            client,
            _peer: peer,
            child,
        };
        wait::until(
            "etcd to be healthy",
            wait::default_timeout(),
            || match http(etcd.client.port, "GET", "/health", None) {
                Ok((200, body)) if body.contains("true") => Check::Done(()),
                Ok((code, body)) => Check::NotYet(format!("{code} {body}")),
                Err(e) => Check::NotYet(e.to_string()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        etcd
    }

    /// `host:port` of the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client.port)
    }

    /// Delete `key` (through etcd's JSON gateway, as `etcdctl del` does).
    pub fn delete(&self, key: &str) {
        let body = format!("{{\"key\": \"{}\"}}", base64(key.as_bytes()));
        let (code, text) = http(self.client.port, "POST", "/v3/kv/deleterange", Some(&body))
            .unwrap_or_else(|e| panic!("etcd: delete {key}: {e}"));
        assert_eq!(code, 200, "etcd: delete {key}: {text}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        let _ = process::kill(pid, libc::SIGTERM);
        let stopped = wait::until("etcd to stop", Duration::from_secs(20), || {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => Check::Done(()),
                Ok(None) => Check::NotYet("running".into()),
            }
        });
        if stopped.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        keep_if_failed(&mut self.dir, "etcd");
    }
}

/// Keep `dir` when the thread panics or `SLOT_FAILOVER_KEEP` is set, saying where.
fn keep_if_failed(dir: &mut Option<tempfile::TempDir>, what: &str) {
    let keep = std::env::var_os("SLOT_FAILOVER_KEEP").is_some();
    if (std::thread::panicking() || keep)
        && let Some(dir) = dir.take()
    {
        eprintln!("--- {what}: kept {} ---", dir.keep().display());
    }
}

/// Run `cmd` as the server user when we are root (setuid in the child: the pid we get is the
/// program's own, so signals reach it), in `dir`, with a clean PostgreSQL environment.
fn as_server_user(cmd: &mut Command, dir: &Path) {
    if let Some(user) = server_user() {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd.current_dir(dir)
        .env("HOME", dir)
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST")
        .env_remove("PGUSER")
        .env_remove("PGPASSWORD");
}

/// Standard base64 (for etcd's JSON gateway).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One HTTP/1.1 request to 127.0.0.1:`port` (a new connection, closed after the answer):
/// the status code and the body. Patroni's REST API answers a switchover only once it is
/// over, so the read timeout is generous.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> io::Result<(u16, String)> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

/// One Patroni member: its Patroni process, and the PostgreSQL server Patroni runs for it.
pub struct Member {
    name: String,
    base: PathBuf,
    pg: PortLease,
    rest: PortLease,
    patroni: Option<Child>,
}

impl Member {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.pg.port
    }

    pub fn rest_port(&self) -> u16 {
        self.rest.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// The server's Unix socket directory (the member's directory).
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    fn config_path(&self) -> PathBuf {
        self.base.join("patroni.yml")
    }

    /// Patroni's output: its log lines, the server log (no logging collector), and what
    /// `pre_promote` printed.
    pub fn log_path(&self) -> PathBuf {
        self.base.join("patroni.log")
    }

    /// Start Patroni with the member's YAML.
    pub fn start(&mut self) {
        assert!(
            self.patroni.is_none(),
            "{}: Patroni runs already",
            self.name
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the member's log");
        let mut cmd = Command::new(patroni_venv().join("bin/patroni"));
        cmd.arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        as_server_user(&mut cmd, &self.base);
        self.patroni = Some(cmd.spawn().expect("start Patroni"));
    }

    /// The postmaster's pid, while postmaster.pid names a live process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        process::exists(pid).then_some(pid)
    }

    /// kill -9 the postmaster and its children (Patroni lives on and reacts).
    pub fn kill_postmaster(&self) {
        let pid = self
            .postmaster_pid()
            .unwrap_or_else(|| panic!("{}: no postmaster to kill", self.name));
        process::kill9_postmaster(pid, &self.name);
    }

    /// kill -9 Patroni and the postmaster: the whole member is lost at once.
    pub fn kill_everything(&mut self) {
        let postmaster = self.postmaster_pid();
        if let Some(mut child) = self.patroni.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = postmaster {
            process::kill9_postmaster(pid, &self.name);
        }
    }

    /// Stop the member as an operator does: SIGTERM to Patroni, which stops PostgreSQL (fast)
    /// and gives the leader key up; wait until both are gone.
    pub fn stop(&mut self) {
        let postmaster = self.ask_to_stop();
        self.wait_stopped(postmaster);
    }

    /// SIGTERM to Patroni; returns the postmaster's pid to wait for.
    fn ask_to_stop(&mut self) -> Option<i32> {
        let postmaster = self.postmaster_pid();
        if let Some(child) = &self.patroni {
            let _ = process::kill(child.id() as i32, libc::SIGTERM);
        }
        postmaster
    }

    /// Wait until Patroni and `postmaster` are gone (kill -9 what is left after a minute).
    fn wait_stopped(&mut self, postmaster: Option<i32>) {
        if let Some(mut child) = self.patroni.take() {
            let stopped = wait::until(
                &format!("Patroni of {} to stop", self.name),
                Duration::from_secs(60),
                || match child.try_wait() {
                    Ok(Some(_)) | Err(_) => Check::Done(()),
                    Ok(None) => Check::NotYet("running".into()),
                },
            );
            if stopped.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(pid) = postmaster {
            let gone = wait::until(
                &format!("the postmaster of {} to stop", self.name),
                Duration::from_secs(60),
                || {
                    if process::exists(pid) {
                        Check::NotYet(format!("pid {pid} alive"))
                    } else {
                        Check::Done(())
                    }
                },
            );
            if gone.is_err() {
                process::kill9_postmaster(pid, &self.name);
            }
        }
    }

    /// A request to the member's REST API.
    pub fn rest(&self, method: &str, path: &str, body: Option<&str>) -> io::Result<(u16, String)> {
        http(self.rest.port, method, path, body)
    }

    /// `GET /patroni`, parsed (None while Patroni does not answer).
    pub fn status(&self) -> Option<serde_json::Value> {
        let (_, body) = self.rest("GET", "/patroni", None).ok()?;
        serde_json::from_str(&body).ok()
    }

    /// Patroni's role and state for the member, e.g. `primary/running`,
    /// `replica/streaming/streaming`; `down` when Patroni does not answer.
    pub fn role(&self) -> String {
        match self.status() {
            None => "down".into(),
            Some(s) => {
                let field = |k: &str| s[k].as_str().unwrap_or("-").to_string();
                let mut role = format!("{}/{}", field("role"), field("state"));
                if s.get("replication_state").is_some() {
                    role.push('/');
                    role.push_str(&field("replication_state"));
                }
                role
            }
        }
    }

    fn config(&self, db: &str) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port())
            .user("postgres")
            .password(SUPERUSER_PASSWORD)
            .dbname(db)
            .application_name("pg_test")
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Run `sql` like [`crate::Cluster::psql`] (over TCP, as the recipe's superuser).
    pub fn psql(&self, db: &str, sql: &str) -> PsqlOutput {
        run_script(self.config(db), sql)
    }

    /// Run `sql`; panic if anything fails.
    pub fn safe_psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db, sql);
        if out.rc != 0 {
            panic!("{}: query failed in {db}: {sql}\n{}", self.name, out.stderr);
        }
        out.stdout
    }

    /// Wait until `sql` returns `expected`; errors count as "not yet". Panics on timeout.
    pub fn poll_query_until(&self, db: &str, sql: &str, expected: &str) {
        let what = format!("query on {} to return {expected:?}: {sql}", self.name);
        wait::until(&what, wait::default_timeout(), || {
            let out = self.psql(db, sql);
            if out.rc == 0 && out.stdout == expected {
                Check::Done(())
            } else if out.rc == 0 {
                Check::NotYet(format!("{:?}", out.stdout))
            } else {
                Check::NotYet(out.stderr.trim().to_string())
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n--- {} ---\n{}", self.name, self.log_tail(40)));
    }

    /// Whether the server answers and is not in recovery.
    pub fn is_writable(&self) -> bool {
        let out = self.psql("postgres", "SELECT pg_catalog.pg_is_in_recovery()");
        out.rc == 0 && out.stdout == "f"
    }

    pub fn log_position(&self) -> u64 {
        fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    pub fn log_from(&self, offset: u64) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(self.log_path())
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_from(0);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Wait until the member's log, from byte `offset` on, contains `needle`; returns the
    /// line it is on.
    pub fn wait_for_log(&self, needle: &str, offset: u64) -> String {
        wait::until(
            &format!("{}'s log to say {needle:?}", self.name),
            wait::default_timeout(),
            || match self.log_from(offset).lines().find(|l| l.contains(needle)) {
                Some(line) => Check::Done(line.to_string()),
                None => Check::NotYet("not yet".into()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n--- {} ---\n{}", self.name, self.log_tail(40)))
    }
}

/// A Patroni cluster: etcd and `n` members `node1`, `node2`, ...
pub struct Patroni {
    dir: Option<tempfile::TempDir>,
    members: Vec<Member>,
    pub etcd: Etcd,
    pub scope: String,
    pub install: &'static PgInstall,
}

/// The recipe's YAML for member `name` of a test cluster: what differs on this machine
/// substituted, each substitution checked (see the module header).
pub fn recipe_yaml(install: &PgInstall, scope: &str, member: &Member, etcd: &str) -> String {
    let yaml = recipe_block("patroni.yml");
    let base = member.base.display().to_string();
    let bindir = install.bindir.display().to_string();
    let mut y = yaml;
    for (from, to) in [
        // Where things are on this machine.
        ("scope: orders", format!("scope: {scope}")),
        (
            "127.0.0.1:8008",
            format!("127.0.0.1:{}", member.rest_port()),
        ),
        ("127.0.0.1:2379", etcd.to_string()),
        ("127.0.0.1:5432", format!("127.0.0.1:{}", member.port())),
        ("-p 5432", format!("-p {}", member.port())),
        ("/var/lib/postgresql/17/node1", format!("{base}/data")),
        (
            "/var/lib/postgresql/17/pgpass.node1",
            format!("{base}/pgpass"),
        ),
        ("/usr/lib/postgresql/17/bin", bindir),
        ("/var/run/postgresql", base.clone()),
        (
            "slot_failover.own_slot_name: node1",
            format!("slot_failover.own_slot_name: {}", member.name),
        ),
        ("name: node1", format!("name: {}", member.name)),
        // Patroni's quickest timings (ttl 20 is its minimum), so that a test takes seconds.
        ("ttl: 30", "ttl: 20".into()),
        ("loop_wait: 10", "loop_wait: 1".into()),
        ("retry_timeout: 10", "retry_timeout: 3".into()),
    ] {
        y = substitute(&y, from, &to);
    }
    y
}

impl Patroni {
    /// Start etcd and `n` members with the recipe's YAML, passed through `adapt(member name,
    /// yaml)` for what a test adds; wait until one member is a writable primary and the others
    /// stream from it.
    pub fn start(n: usize, adapt: impl Fn(&str, String) -> String) -> Patroni {
        let install = PgInstall::from_env();
        let dir = tempfile::Builder::new()
            .prefix("sf_patroni_")
            .tempdir()
            .expect("create the cluster's directory");
        give_to_server_user(dir.path());
        let etcd = Etcd::start();
        let scope = format!("sf{}", std::process::id());
        let mut members = Vec::new();
        for i in 1..=n {
            let name = format!("node{i}");
            let base = dir.path().join(&name);
            fs::create_dir(&base).expect("member directory");
            give_to_server_user(&base);
            let member = Member {
                name: name.clone(),
                base,
                pg: port::reserve(),
                rest: port::reserve(),
                patroni: None,
            };
            let yaml = adapt(
                &name,
                recipe_yaml(install, &scope, &member, &etcd.endpoint()),
            );
            fs::write(member.config_path(), yaml).expect("write the member's YAML");
            give_to_server_user(&member.config_path());
            members.push(member);
        }
        let mut cluster = Patroni {
            dir: Some(dir),
            members,
            etcd,
            scope,
            install,
        };
        // The first member bootstraps alone (initdb), the others then copy it (pg_basebackup).
        cluster.members[0].start();
        cluster.wait_for_leader(None);
        for m in cluster.members.iter_mut().skip(1) {
            m.start();
        }
        cluster.wait_until_replicas_stream(n - 1);
        cluster
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    pub fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// The synchronous standby (`GET /sync` answers 200 only there), once there is one: in
    /// `synchronous_mode` Patroni promotes no other member.
    pub fn sync_standby(&self) -> String {
        wait::until(
            "a synchronous standby",
            wait::default_timeout(),
            || match self
                .members
                .iter()
                .find(|m| matches!(m.rest("GET", "/sync", None), Ok((200, _))))
            {
                Some(m) => Check::Done(m.name.clone()),
                None => Check::NotYet(self.roles()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every member's role, for messages: `node1=primary/running node2=...`.
    pub fn roles(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.role()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The member that is primary now (Patroni says so and its server accepts writes).
    pub fn leader(&self) -> &Member {
        let name = self.wait_for_leader(None);
        self.member(&name)
    }

    /// Wait until a member other than `not` is primary, running and writable; its name.
    pub fn wait_for_leader(&self, not: Option<&str>) -> String {
        wait::until(
            &format!("a writable primary other than {not:?}"),
            wait::default_timeout(),
            || {
                let found = self.members.iter().find(|m| {
                    Some(m.name.as_str()) != not && m.role() == "primary/running" && m.is_writable()
                });
                match found {
                    Some(m) => Check::Done(m.name.clone()),
                    None => Check::NotYet(self.roles()),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()))
    }

    /// Wait until `count` members are replicas streaming from the leader.
    pub fn wait_until_replicas_stream(&self, count: usize) {
        wait::until(
            &format!("{count} replicas streaming"),
            wait::default_timeout(),
            || {
                let streaming = self
                    .members
                    .iter()
                    .filter(|m| {
                        m.role().starts_with("replica/") && m.role().ends_with("/streaming")
                    })
                    .count();
                if streaming >= count {
                    Check::Done(())
                } else {
                    Check::NotYet(self.roles())
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()));
    }

    /// The last lines of every member's log, for a failure message.
    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.name, m.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A libpq connection string that reaches whichever member is the leader.
    pub fn leader_connstr(&self, db: &str) -> String {
        let hosts = vec!["127.0.0.1"; self.members.len()].join(",");
        let ports = self
            .members
            .iter()
            .map(|m| m.port().to_string())
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "host={hosts} port={ports} dbname={db} user=postgres password={SUPERUSER_PASSWORD} target_session_attrs=read-write connect_timeout=5"
        )
    }

    /// Change Patroni's dynamic configuration (`PATCH /config`, like `patronictl
    /// edit-config`), and wait until every running member has it.
    pub fn patch_config(&self, json: &str) {
        let leader = self.leader();
        let (code, body) = leader
            .rest("PATCH", "/config", Some(json))
            .unwrap_or_else(|e| panic!("PATCH /config: {e}"));
        assert_eq!(code, 200, "PATCH /config {json}: {body}");
        let want: serde_json::Value = serde_json::from_str(json).expect("JSON");
        wait::until(
            "the members to have the new configuration",
            wait::default_timeout(),
            || {
                let behind: Vec<&str> = self
                    .members
                    .iter()
                    .filter(|m| m.patroni.is_some())
                    .filter(|m| {
                        let Ok((200, body)) = m.rest("GET", "/config", None) else {
                            return true;
                        };
                        let have: serde_json::Value =
                            serde_json::from_str(&body).unwrap_or_default();
                        want.as_object()
                            .is_some_and(|w| w.iter().any(|(k, v)| have.get(k) != Some(v)))
                    })
                    .map(|m| m.name.as_str())
                    .collect();
                if behind.is_empty() {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{behind:?} not yet"))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `POST /switchover` from `leader` to `candidate`, like `patronictl switchover --force`;
    /// Patroni answers once it is over: the answer's code and text.
    pub fn switchover(&self, leader: &str, candidate: &str) -> (u16, String) {
        self.member(leader)
            .rest(
                "POST",
                "/switchover",
                Some(&format!(
                    "{{\"leader\": \"{leader}\", \"candidate\": \"{candidate}\"}}"
                )),
            )
            .unwrap_or_else(|e| panic!("POST /switchover: {e}"))
    }

    /// Tell etcd the leader key is gone, as its TTL running out would a `ttl` later (a test
    /// that lost a whole member saves that wait).
    pub fn expire_leader_key(&self) {
        self.etcd.delete(&format!("/service/{}/leader", self.scope));
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        // All at once: stopping the leader first would only make the others fail over.
        let postmasters: Vec<Option<i32>> =
            self.members.iter_mut().map(Member::ask_to_stop).collect();
        for (m, postmaster) in self.members.iter_mut().zip(postmasters) {
            m.wait_stopped(postmaster);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        keep_if_failed(&mut self.dir, "Patroni cluster");
    }
}

/// A time since `start`, in seconds with one decimal, for the tests' timing lines.
pub fn seconds_since(start: Instant) -> String {
    format!("{:.1} s", start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_the_standard_one() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(
            super::base64(b"/service/x/leader"),
            "L3NlcnZpY2UveC9sZWFkZXI="
        );
    }

    #[test]
    fn the_recipe_has_its_blocks() {
        assert!(super::recipe_sql().contains("CREATE EXTENSION slot_failover;"));
        assert!(super::recipe_block("patroni.yml").contains("pre_promote:"));
    }
}
