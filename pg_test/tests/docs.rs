//! The documentation tells the truth: `docs/reference.md` lists every function, configuration
//! parameter and view or table column a server with the extension has, with the types,
//! defaults, units and contexts `pg_settings` and the catalogs report, and nothing that does not
//! exist; `docs/troubleshooting.md` lists only messages the code emits, and every message the
//! code logs. Runs on every major (the server side is the same on all of them).

use std::collections::BTreeSet;
use std::path::Path;

use pg_test::topology::primary_with_extension;
use regex::Regex;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The rows of the first markdown table after `heading`, as cells.
fn table_after(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .find(&format!("{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    doc[start + heading.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// `x` from a cell written as `` `x` ``.
fn code(cell: &str) -> String {
    cell.trim().trim_matches('`').to_string()
}

#[test]
fn the_reference_matches_the_server() {
    let reference = read("docs/reference.md");
    let primary = primary_with_extension();

    // Configuration parameters, both ways, with type, default, unit, context and range.
    let settings = primary.safe_psql(
        "postgres",
        "SELECT name, vartype, boot_val, coalesce(unit, ''), context,
                coalesce(min_val || ' .. ' || max_val, '')
           FROM pg_catalog.pg_settings WHERE name LIKE 'slot_failover.%' ORDER BY name",
    );
    let documented = table_after(&reference, "## Configuration parameters");
    let mut seen = BTreeSet::new();
    for line in settings.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let (name, vartype, default, unit, context, range) = (f[0], f[1], f[2], f[3], f[4], f[5]);
        let row = documented
            .iter()
            .find(|r| code(&r[0]) == name)
            .unwrap_or_else(|| panic!("GUC {name} is not in docs/reference.md"));
        let default = if default.is_empty() { "''" } else { default };
        let unit = if unit.is_empty() { "-" } else { unit };
        let range = if range.is_empty() {
            "-".to_string()
        } else {
            range.to_string()
        };
        assert_eq!(row[1], vartype, "type of {name}");
        assert_eq!(code(&row[2]), default, "default of {name}");
        assert_eq!(row[3], unit, "unit of {name}");
        assert_eq!(row[4], context, "context of {name}");
        assert_eq!(row[5], range, "range of {name}");
        seen.insert(name.to_string());
    }
    for row in &documented {
        assert!(
            seen.contains(&code(&row[0])),
            "docs/reference.md documents a GUC the server lacks: {}",
            row[0]
        );
    }

    // Functions, both ways.
    let functions: BTreeSet<String> = primary
        .safe_psql(
            "postgres",
            "SELECT p.proname FROM pg_catalog.pg_proc AS p
               JOIN pg_catalog.pg_depend AS d
                 ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                AND d.deptype = 'e'
               JOIN pg_catalog.pg_extension AS e ON e.oid = d.refobjid
              WHERE e.extname = 'slot_failover' ORDER BY 1",
        )
        .lines()
        .map(str::to_string)
        .collect();
    let documented: BTreeSet<String> = table_after(&reference, "## Functions")
        .iter()
        .map(|r| {
            let signature = code(&r[0]);
            let name = signature
                .strip_prefix("slot_failover.")
                .and_then(|s| s.split('(').next())
                .unwrap_or_else(|| panic!("not a slot_failover.f(...) signature: {signature}"));
            name.to_string()
        })
        .collect();
    assert_eq!(
        documented, functions,
        "functions in docs/reference.md vs the extension"
    );

    // Every column of every view and table, with its type, both ways.
    for relation in ["status", "standbys", "marked_slots", "failover_standbys"] {
        let columns = primary.safe_psql(
            "postgres",
            &format!(
                "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
                   FROM pg_catalog.pg_attribute AS a
                  WHERE a.attrelid = 'slot_failover.{relation}'::pg_catalog.regclass
                    AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
            ),
        );
        let documented = table_after(&reference, &format!("### `slot_failover.{relation}`"));
        let actual: Vec<(String, String)> = columns
            .lines()
            .map(|l| {
                let (n, t) = l.split_once('|').unwrap();
                (n.to_string(), t.to_string())
            })
            .collect();
        let written: Vec<(String, String)> = documented
            .iter()
            .map(|r| (code(&r[0]), r[1].clone()))
            .collect();
        assert_eq!(
            written, actual,
            "columns of slot_failover.{relation} in docs/reference.md"
        );
    }
}

/// Every `.rs` file under `dir` (relative to the workspace root), in a stable order.
fn rust_files(dir: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir),
        &mut out,
    );
    out.sort();
    out
}

/// Source text of the extension (and of its rules crate, where the copies' details are
/// written) as a message reads in the log: escapes undone, the worker's name filled in.
fn source_text() -> String {
    let mut text = String::new();
    for path in rust_files("src").into_iter().chain(rust_files("rules/src")) {
        text.push_str(&std::fs::read_to_string(&path).unwrap());
    }
    text.replace("\\\"", "\"")
        .replace("{WORKER_TYPE}", "slot_failover worker")
}

/// The pieces of a message between its run-time parts (`"x"`, `<...>`, `{...}`), trimmed of
/// punctuation, that are long enough to mean something.
fn fragments(message: &str) -> Vec<String> {
    let holes = Regex::new(r#"<[^>]*>|\{[^}]*\}|"[^"]*"|\.\.\."#).unwrap();
    holes
        .split(message)
        .map(|f| {
            f.trim_matches(|c: char| c.is_whitespace() || ":;,.()/".contains(c))
                .to_string()
        })
        .filter(|f| f.len() >= 12)
        .collect()
}

#[test]
fn the_troubleshooting_page_matches_the_code() {
    let page = read("docs/troubleshooting.md");
    let source = source_text();

    // Every message on the page (the first column of its tables) is one the code emits.
    let table_heads = ["| message |", "| problem |", "| detail |"];
    let mut checked = 0;
    let mut in_table = false;
    let code_span = Regex::new(r"`([^`]+)`").unwrap();
    for line in page.lines() {
        if table_heads.iter().any(|h| line.starts_with(h)) {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") || line.contains("PostgreSQL's message") {
            continue;
        }
        let first = line.trim_start_matches('|').split(" | ").next().unwrap();
        for span in code_span.captures_iter(first) {
            let message = span[1]
                .trim_start_matches("WARNING: ")
                .trim_start_matches("FATAL: ");
            for fragment in fragments(message) {
                assert!(
                    source.contains(&fragment),
                    "docs/troubleshooting.md lists {message:?}, but the code never says {fragment:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} fragments checked: is the page's format the same?"
    );

    // Every message the code logs or notices, and every problem the worker reports, is on it.
    let logged = Regex::new(r#"(?s)\b(?:log|warning|notice)!\(\s*"((?:[^"\\]|\\.)*)""#).unwrap();
    let problems = Regex::new(r#"(?s)#\[error\(\s*"((?:[^"\\]|\\.)*)""#).unwrap();
    let raw_upstream = read("src/standby/upstream.rs");
    let mut messages: Vec<String> = Vec::new();
    for path in rust_files("src") {
        let text = std::fs::read_to_string(&path).unwrap();
        // Test code (after `mod tests`) logs nothing a DBA sees.
        let text = text.split("mod tests").next().unwrap();
        messages.extend(logged.captures_iter(text).map(|c| c[1].to_string()));
    }
    messages.extend(
        problems
            .captures_iter(&raw_upstream)
            .map(|c| c[1].to_string()),
    );
    assert!(
        messages.len() > 25,
        "found only {} messages in src/",
        messages.len()
    );
    let page_text = page.replace('`', "");
    for message in messages {
        let message = message
            .replace("\\\"", "\"")
            .replace("{WORKER_TYPE}", "slot_failover worker");
        let longest = fragments(&message).into_iter().max_by_key(String::len);
        if let Some(fragment) = longest {
            assert!(
                page_text.contains(&fragment),
                "the code says {message:?}, but docs/troubleshooting.md does not list it ({fragment:?})"
            );
        }
    }
}
