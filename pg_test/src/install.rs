//! Which PostgreSQL installation the tests run, and as which OS user.
//!
//! The installation is named by `SLOT_FAILOVER_PG_CONFIG` (the path of its `pg_config`; `./run
//! test` sets it per major), falling back to `PG_CONFIG` and then `pg_config` on the PATH.
//!
//! initdb refuses to run as root, so when the tests run as root every server program runs
//! through `runuser -u <user>` (user `SLOT_FAILOVER_TEST_USER`, default `postgres`) and the
//! directories it writes are handed to that user.

use std::ffi::{CString, OsStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A PostgreSQL installation: its binaries and its major version.
#[derive(Debug)]
pub struct PgInstall {
    pub pg_config: PathBuf,
    pub bindir: PathBuf,
    pub libdir: PathBuf,
    /// e.g. "PostgreSQL 17.11"
    pub version: String,
    /// e.g. 17
    pub major: u32,
}

impl PgInstall {
    /// The installation named by the environment, read once per process.
    pub fn from_env() -> &'static PgInstall {
        static INSTALL: OnceLock<PgInstall> = OnceLock::new();
        INSTALL.get_or_init(|| {
            let pg_config = std::env::var_os("SLOT_FAILOVER_PG_CONFIG")
                .or_else(|| std::env::var_os("PG_CONFIG"))
                .map_or_else(|| PathBuf::from("pg_config"), PathBuf::from);
            PgInstall::from_pg_config(&pg_config)
        })
    }

    /// Ask `pg_config` where everything is.
    pub fn from_pg_config(pg_config: &Path) -> PgInstall {
        let out = Command::new(pg_config)
            .args(["--bindir", "--libdir", "--version"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_config.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            pg_config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "unexpected pg_config output: {text}");
        let version = lines[2].trim().to_string();
        let major = parse_major(&version)
            .unwrap_or_else(|| panic!("cannot read a major version from {version:?}"));
        PgInstall {
            pg_config: pg_config.to_path_buf(),
            bindir: PathBuf::from(lines[0].trim()),
            libdir: PathBuf::from(lines[1].trim()),
            version,
            major,
        }
    }

    /// A command running one of this installation's programs (`initdb`, `pg_ctl`, ...), as the
    /// server user when we are root. `LD_LIBRARY_PATH` points at the installation's own
    /// libraries so that its programs never pick up another major's libpq.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = as_server_user(self.bindir.join(program));
        cmd.env("LD_LIBRARY_PATH", &self.libdir);
        cmd.env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd
    }
}

/// "PostgreSQL 17.11" -> 17, "PostgreSQL 18beta1" -> 18, "PostgreSQL 15.18 (Debian ...)" -> 15.
pub fn parse_major(version: &str) -> Option<u32> {
    let rest = version.trim().strip_prefix("PostgreSQL ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The OS user that servers run as, when it is not us.
#[derive(Debug, Clone)]
pub struct ServerUser {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// `Some(user)` when we are root (servers must then run as an unprivileged user), else None.
pub fn server_user() -> Option<&'static ServerUser> {
    static USER: OnceLock<Option<ServerUser>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = std::env::var("SLOT_FAILOVER_TEST_USER").unwrap_or_else(|_| "postgres".into());
        let cname = CString::new(name.clone()).expect("user name contains NUL");
        // SAFETY: getpwnam returns NULL or a pointer to static storage that stays valid until
        // the next getpw* call; we copy the two ids out at once, inside a OnceLock initializer
        // that runs once per process.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        assert!(
            !pw.is_null(),
            "running as root, but there is no OS user {name:?} to run PostgreSQL as \
             (./run setup creates it; or set SLOT_FAILOVER_TEST_USER)"
        );
        // SAFETY: pw is non-null and points at a valid passwd entry (see above).
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Some(ServerUser { name, uid, gid })
    })
    .as_ref()
}

/// A command running `program` as the server user when we are root, else as ourselves.
pub fn as_server_user(program: impl AsRef<OsStr>) -> Command {
    match server_user() {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user.name.as_str(), "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Hand `path` (not recursively) to the server user, when there is one.
pub fn give_to_server_user(path: &Path) {
    if let Some(user) = server_user() {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), user.name));
    }
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn majors_are_read_from_pg_config_versions() {
        assert_eq!(parse_major("PostgreSQL 17.11"), Some(17));
        assert_eq!(
            parse_major("PostgreSQL 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("PostgreSQL 18beta1"), Some(18));
        assert_eq!(parse_major("PostgreSQL 9.6.24"), Some(9));
        assert_eq!(parse_major("MySQL 8.0"), None);
        assert_eq!(parse_major("PostgreSQL x"), None);
    }
}
