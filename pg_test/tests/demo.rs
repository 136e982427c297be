//! The README's main command, `./run demo`, is a failover with nothing lost: run it (the same
//! binary, on the major under test) and hold it to its own report.

use std::process::Command;

#[test]
fn the_demo_fails_over_with_identical_rows() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("identical: nothing lost, nothing applied twice"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failover_ready() on the standby: t"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"its copy of "sub" is now an ordinary slot"#),
        "{stdout}"
    );
}
