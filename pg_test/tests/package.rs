//! Packages: `./run package` builds, for the major under test, a tarball whose `install.sh`
//! installs a working extension into a PostgreSQL that never had it, and on 15 (Debian's own
//! build, the only one here a Debian package can honestly target) a
//! `postgresql-15-slot-failover` .deb whose files land where Debian's PostgreSQL 15 looks.
//! Each package is installed into a private copy of the installation under test with every
//! slot_failover file removed first, and a server from that copy must load the library,
//! start the worker and create the extension at the crate's version. PGXN's META.json must
//! agree with the crate's version.
//!
//! The test packages a debug build (`--debug`), which `./run test` has just built; `./run
//! package` without it builds the release artefacts the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use pg_test::topology::{PRELOAD, extension_version};
use pg_test::{Cluster, InitOptions, PgInstall};

/// The release before this one: its upgrade script to this version must ship.
const PREVIOUS: &str = "0.5.0";

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The directory `./run setup` made for this installation (it holds a `.ready` file).
fn tree_root(install: &PgInstall) -> PathBuf {
    install
        .pg_config
        .ancestors()
        .find(|d| d.join(".ready").is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} is not inside a tree made by ./run setup",
                install.pg_config.display()
            )
        })
        .to_path_buf()
}

/// A copy of the installation under test in `into`, with every slot_failover file removed;
/// returns the copy's `pg_config`.
fn bare_copy(install: &PgInstall, into: &Path) -> PathBuf {
    let root = tree_root(install);
    run(Command::new("cp").arg("-a").arg(&root).arg(into));
    let relative = install.pg_config.strip_prefix(&root).unwrap();
    let pg_config = into.join(relative);
    for dir in ["--pkglibdir", "--sharedir", "--bindir"] {
        let mut path = PathBuf::from(run(Command::new(&pg_config).arg(dir)).trim());
        if dir == "--sharedir" {
            path.push("extension");
        }
        for entry in std::fs::read_dir(&path).expect("read the copy") {
            let entry = entry.unwrap();
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("slot_failover")
            {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    pg_config
}

/// A started server from installation `pg_config` with the extension preloaded and created;
/// checks the library loaded, the worker runs and the extension is at `version`.
fn check_installation(pg_config: &Path, version: &str, major: u32) {
    let install: &'static PgInstall = Box::leak(Box::new(PgInstall::from_pg_config(pg_config)));
    assert_eq!(install.major, major);
    let mut node = Cluster::init(
        "packaged",
        InitOptions {
            install: Some(install),
            ..InitOptions::logical()
        },
    );
    node.append_conf("postgresql.conf", PRELOAD);
    node.start();
    node.safe_psql("postgres", "CREATE EXTENSION slot_failover");
    assert_eq!(
        node.safe_psql("postgres", "SELECT slot_failover.version()"),
        format!("slot_failover {version} (PostgreSQL {major})")
    );
    assert_eq!(
        node.safe_psql(
            "postgres",
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'slot_failover'"
        ),
        version
    );
    node.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'slot_failover worker'",
        "1",
    );
    // The promotion gate ships beside psql and talks to the server through it: on a primary
    // failover_ready() refuses to answer, so the gate refuses, saying why.
    let gate = install.bindir.join("slot_failover_pre_promote");
    let socket = node.base_dir().display().to_string();
    let out = pg_test::install::as_server_user(&gate)
        .args([
            "-h",
            &socket,
            "-p",
            &node.port().to_string(),
            "-d",
            "postgres",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", gate.display()));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("slot_failover_pre_promote: refusing promotion: could not ask the server whether its copies are ready")
            && said.contains("can only be called on a standby"),
        "{said}"
    );
    // The upgrade script ships too: the previous release can be updated in place.
    let scripts = node.safe_psql(
        "postgres",
        "SELECT string_agg(source || '>' || target, ',' ORDER BY source)
           FROM pg_catalog.pg_extension_update_paths('slot_failover') WHERE path IS NOT NULL",
    );
    assert!(
        scripts.contains(&format!("{PREVIOUS}>{version}")),
        "{scripts}"
    );
}

/// A temporary directory the server user can read (the copies run as that user).
fn readable_tempdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn packages_install_a_working_extension() {
    let install = PgInstall::from_env();
    let version = extension_version();
    let major = install.major;
    let out = readable_tempdir("sf_dist_");
    let listed = run(Command::new(project_root().join("run"))
        .args(["package", "--debug", "--out"])
        .arg(out.path())
        .arg(major.to_string()));

    let arch = run(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_string();
    let name = format!("slot_failover-{version}-pg{major}-{arch}");
    let tarball = out.path().join(format!("{name}.tar.gz"));
    assert!(tarball.is_file(), "no {} in:\n{listed}", tarball.display());

    // The tarball, through its own install.sh, into a bare copy.
    let copy = readable_tempdir("sf_pkg_tar_");
    let pg_config = bare_copy(install, &copy.path().join("pg"));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(copy.path()));
    let unpacked = copy.path().join(&name);
    let contents = run(Command::new("tar").arg("-tzf").arg(&tarball));
    for file in [
        "install.sh".to_string(),
        "README".to_string(),
        "lib/slot_failover.so".to_string(),
        "bin/slot_failover_pre_promote".to_string(),
        "docs/operations.md".to_string(),
        "monitoring/postgres_exporter.yaml".to_string(),
        "extension/slot_failover.control".to_string(),
        format!("extension/slot_failover--{version}.sql"),
        format!("extension/slot_failover--{PREVIOUS}--{version}.sql"),
    ] {
        assert!(
            contents.contains(&format!("{name}/{file}\n")),
            "{file} missing:\n{contents}"
        );
    }
    // install.sh refuses a PostgreSQL of another major, saying so.
    let other = copy.path().join("pg_config_of_9.6");
    std::fs::write(&other, "#!/bin/sh\necho 'PostgreSQL 9.6.24'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrong = Command::new(unpacked.join("install.sh"))
        .arg(&other)
        .output()
        .unwrap();
    let complaint = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success(),
        "install.sh accepted PostgreSQL 9.6"
    );
    assert!(
        complaint.contains(&format!("this package is for PostgreSQL {major}")),
        "{complaint}"
    );
    let said = run(Command::new(unpacked.join("install.sh")).arg(&pg_config));
    assert!(
        said.contains(&format!("slot_failover {version} installed")),
        "{said}"
    );
    check_installation(&pg_config, &version, major);

    // On 15, the .deb: its fields, its file list, and its files working in place.
    if major == 15 {
        let deb = out.path().join(format!(
            "postgresql-15-slot-failover_{version}-1_{arch}.deb"
        ));
        assert!(deb.is_file(), "no {} in:\n{listed}", deb.display());
        let fields = run(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .args(["Package", "Version", "Depends"]));
        assert!(
            fields.contains("Package: postgresql-15-slot-failover"),
            "{fields}"
        );
        assert!(
            fields.contains(&format!("Version: {version}-1")),
            "{fields}"
        );
        assert!(fields.contains("Depends: postgresql-15,"), "{fields}");
        let files = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
        for file in [
            "./usr/lib/postgresql/15/lib/slot_failover.so".to_string(),
            "./usr/lib/postgresql/15/bin/slot_failover_pre_promote".to_string(),
            "./usr/share/postgresql/15/extension/slot_failover.control".to_string(),
            format!("./usr/share/postgresql/15/extension/slot_failover--{version}.sql"),
            "./usr/share/doc/postgresql-15-slot-failover/docs/reference.md".to_string(),
        ] {
            assert!(files.contains(&file), "{file} missing:\n{files}");
        }
        let copy = readable_tempdir("sf_pkg_deb_");
        let root = copy.path().join("pg");
        let pg_config = bare_copy(install, &root);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        check_installation(&pg_config, &version, major);
    }
}

/// The conventional entry points (`pgxn install` and packagers run `make` and `make install`
/// with `PG_CONFIG`): `make install` puts a working extension into a bare copy of this
/// installation, and `make uninstall` takes every file of it out again.
#[test]
fn make_install_and_uninstall_with_pg_config() {
    let install = PgInstall::from_env();
    let version = extension_version();
    let copy = readable_tempdir("sf_make_");
    let pg_config = bare_copy(install, &copy.path().join("pg"));
    let make = |target: &str| {
        run(Command::new("make")
            .current_dir(project_root())
            .arg(target)
            .arg(format!("PG_CONFIG={}", pg_config.display()))
            .arg("PROFILE=debug"))
    };
    make("install");
    check_installation(&pg_config, &version, install.major);
    make("uninstall");
    let left: Vec<String> = ["--pkglibdir", "--sharedir", "--bindir"]
        .iter()
        .flat_map(|dir| {
            let mut path = PathBuf::from(run(Command::new(&pg_config).arg(dir)).trim());
            if *dir == "--sharedir" {
                path.push("extension");
            }
            std::fs::read_dir(&path)
                .expect("read the copy")
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("slot_failover"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(left.is_empty(), "make uninstall left {left:?}");
}

#[test]
fn pgxn_meta_json_matches_the_crate() {
    let text = std::fs::read_to_string(project_root().join("META.json")).expect("META.json");
    let meta: serde_json::Value = serde_json::from_str(&text).expect("META.json is JSON");
    let version = extension_version();
    // The fields PGXN's META spec 1.0.0 requires.
    for key in [
        "name",
        "abstract",
        "version",
        "maintainer",
        "license",
        "provides",
        "meta-spec",
    ] {
        assert!(meta.get(key).is_some(), "META.json has no {key}");
    }
    assert_eq!(meta["name"], "slot_failover");
    assert_eq!(meta["version"], version.as_str());
    assert_eq!(meta["license"], "postgresql");
    assert_eq!(meta["meta-spec"]["version"], "1.0.0");
    let provided = &meta["provides"]["slot_failover"];
    assert_eq!(provided["version"], version.as_str());
    let file = provided["file"]
        .as_str()
        .expect("provides.slot_failover.file");
    assert!(project_root().join(file).is_file(), "{file} does not exist");
    assert_eq!(
        meta["prereqs"]["runtime"]["requires"]["PostgreSQL"],
        "14.0.0"
    );
}
