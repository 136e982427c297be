//! libpq connection strings: does one name a database, and adding one that does not.
//! Pure logic, unit-tested without a server.
//!
//! `pg_basebackup -R` writes a primary_conninfo without `dbname` (a physical walsender ignores
//! it), but the worker needs one to reach the database the extension is installed in, so it
//! adds `slot_failover.database` when none is given. It also sets its own `application_name`,
//! so that its connection is never taken for the standby's walreceiver (primary_conninfo
//! usually names the standby, and synchronous_standby_names may match that name).
//!
//! Passwords never reach the server log: [`redact_passwords`] masks them in the lines
//! PostgreSQL writes when a connection string parameter changes (see `log_redaction.rs`).

/// The `application_name` of the worker's upstream connection.
pub const WORKER_APPLICATION_NAME: &str = "slot_failover worker";

/// The `application_name` of the worker's second connection, which streams the moves
/// (`slot_failover.slot_feed()`).
pub const FEED_APPLICATION_NAME: &str = "slot_failover worker feed";

/// The connection string the worker uses: `conninfo` with `dbname` added when missing and
/// `application_name` set to [`WORKER_APPLICATION_NAME`] (a later key overrides an earlier one).
pub fn for_worker(conninfo: &str, database: &str) -> String {
    with_application_name(&with_database(conninfo, database), WORKER_APPLICATION_NAME)
}

/// `conninfo` with `application_name` set to `name` (added last: a later key overrides an
/// earlier one, in key=value strings and in URIs).
pub fn with_application_name(conninfo: &str, name: &str) -> String {
    if is_uri(conninfo) {
        let sep = if conninfo.contains('?') { '&' } else { '?' };
        format!("{conninfo}{sep}application_name={}", percent_encode(name))
    } else {
        format!("{conninfo} application_name='{name}'")
    }
}

fn is_uri(conninfo: &str) -> bool {
    let t = conninfo.trim_start();
    t.starts_with("postgresql://") || t.starts_with("postgres://")
}

/// `text` with every password in it masked: `password=...` values (quoted or not, in
/// key=value strings or URI queries) and the `:password@` part of URIs. None if there was
/// nothing to mask.
pub fn redact_passwords(text: &str) -> Option<String> {
    const MASK: &str = "********";
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    loop {
        let key_at = rest.find("password");
        let uri_at = rest.find("://");
        match (key_at, uri_at) {
            (Some(k), u) if u.is_none_or(|u| k < u) => {
                let after_key = &rest[k + "password".len()..];
                let trimmed = after_key.trim_start();
                let preceded_ok = k == 0
                    || !rest.as_bytes()[k - 1].is_ascii_alphanumeric()
                        && rest.as_bytes()[k - 1] != b'_';
                if preceded_ok && trimmed.starts_with('=') {
                    let value = trimmed[1..].trim_start();
                    let value_start = text_offset(rest, value);
                    let value_len = value_length(value);
                    out.push_str(&rest[..value_start]);
                    out.push_str(MASK);
                    rest = &rest[value_start + value_len..];
                    changed = true;
                } else {
                    out.push_str(&rest[..k + "password".len()]);
                    rest = &rest[k + "password".len()..];
                }
            }
            (_, Some(u)) => {
                // scheme://[user[:password]@]host...
                let authority_start = u + 3;
                let authority = &rest[authority_start..];
                let end = authority
                    .find(['/', '?', ' ', '"', '\'', '\n'])
                    .unwrap_or(authority.len());
                let head = &authority[..end];
                if let Some(at) = head.rfind('@')
                    && let Some(colon) = head[..at].find(':')
                {
                    out.push_str(&rest[..authority_start + colon + 1]);
                    out.push_str(MASK);
                    rest = &rest[authority_start + at..];
                    changed = true;
                } else {
                    out.push_str(&rest[..authority_start]);
                    rest = &rest[authority_start..];
                }
            }
            _ => break,
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Byte offset of `inner` (a sub-slice) within `outer`.
fn text_offset(outer: &str, inner: &str) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Length of a conninfo value at the start of `value`: quoted ('...' with backslash escapes)
/// or up to whitespace, `&` (URI query) or a double quote (end of a quoted log value).
fn value_length(value: &str) -> usize {
    let bytes = value.as_bytes();
    if bytes.first() == Some(&b'\'') {
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'\'' => return i + 1,
                _ => i += 1,
            }
        }
        return bytes.len();
    }
    value
        .find(|c: char| c.is_whitespace() || c == '&' || c == '"')
        .unwrap_or(value.len())
}

/// Does `conninfo` (key=value form or a postgres:// URI) set `dbname`?
pub fn names_database(conninfo: &str) -> bool {
    let trimmed = conninfo.trim_start();
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path_db = before_query
            .split_once('/')
            .is_some_and(|(_, db)| !db.is_empty());
        return path_db
            || query
                .split('&')
                .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == "dbname"));
    }
    keys(conninfo).iter().any(|k| k == "dbname")
}

/// `conninfo` with `dbname` set to `database` when it names none; unchanged otherwise.
pub fn with_database(conninfo: &str, database: &str) -> String {
    if names_database(conninfo) {
        return conninfo.to_string();
    }
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        let sep = if conninfo.contains('?') { '&' } else { '?' };
        return format!("{conninfo}{sep}dbname={}", percent_encode(database));
    }
    let quoted = database.replace('\\', "\\\\").replace('\'', "\\'");
    if conninfo.trim().is_empty() {
        format!("dbname='{quoted}'")
    } else {
        format!("{conninfo} dbname='{quoted}'")
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The keys of a key=value connection string, following libpq's quoting rules
/// (values in single quotes, backslash escapes).
fn keys(conninfo: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return keys;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return keys; // malformed: libpq will say so when connecting
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    chars.next();
                }
            }
        }
        keys.push(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dbname_in_key_value_strings() {
        assert!(names_database("host=a dbname=app"));
        assert!(names_database("host=a dbname = 'my app' port=5"));
        assert!(!names_database("host=a port=5432 user=rep"));
        assert!(!names_database("host=a application_name='dbname=x'"));
        assert!(!names_database("host='a b\\' dbname=x' port=1"));
        assert!(!names_database(""));
    }

    #[test]
    fn finds_dbname_in_uris() {
        assert!(names_database("postgresql://u@h:5/app"));
        assert!(names_database("postgres://h/?dbname=app"));
        assert!(names_database("postgresql://h?sslmode=off&dbname=app"));
        assert!(!names_database("postgresql://u@h:5"));
        assert!(!names_database("postgresql://u@h:5/?sslmode=off"));
    }

    #[test]
    fn the_worker_names_itself() {
        assert_eq!(
            for_worker("host=a application_name=standby1", "db"),
            "host=a application_name=standby1 dbname='db' application_name='slot_failover worker'"
        );
        assert_eq!(
            for_worker("postgresql://h/app", "db"),
            "postgresql://h/app?application_name=slot_failover%20worker"
        );
        // Its feed connection names itself again, last (the last key wins).
        assert_eq!(
            with_application_name(&for_worker("host=a", "db"), FEED_APPLICATION_NAME),
            "host=a dbname='db' application_name='slot_failover worker' application_name='slot_failover worker feed'"
        );
        assert_eq!(
            with_application_name(
                &for_worker("postgresql://h/app", "db"),
                FEED_APPLICATION_NAME
            ),
            "postgresql://h/app?application_name=slot_failover%20worker&application_name=slot_failover%20worker%20feed"
        );
    }

    #[test]
    fn passwords_are_masked_wherever_they_stand() {
        let line = r#"parameter "primary_conninfo" changed to "host=a password=s3cret port=5""#;
        assert_eq!(
            redact_passwords(line).unwrap(),
            r#"parameter "primary_conninfo" changed to "host=a password=******** port=5""#
        );
        assert_eq!(
            redact_passwords("user=u password = 'it\\'s x' dbname=d").unwrap(),
            "user=u password = ******** dbname=d"
        );
        assert_eq!(
            redact_passwords("password=abc").unwrap(),
            "password=********"
        );
        assert_eq!(
            redact_passwords(r#"changed to "postgresql://rep:s3cret@h:5/db?sslmode=off""#).unwrap(),
            r#"changed to "postgresql://rep:********@h:5/db?sslmode=off""#
        );
        assert_eq!(
            redact_passwords("postgres://h/db?user=u&password=s3cret&x=1").unwrap(),
            "postgres://h/db?user=u&password=********&x=1"
        );
        assert_eq!(redact_passwords("host=a user=u"), None);
        assert_eq!(redact_passwords("postgresql://user@host/db"), None);
        assert_eq!(
            redact_passwords("passwords are fine; no_password=here"),
            None
        );
    }

    #[test]
    fn adds_the_database_only_when_missing() {
        assert_eq!(
            with_database("host=a port=5", "postgres"),
            "host=a port=5 dbname='postgres'"
        );
        assert_eq!(
            with_database("host=a dbname=app", "postgres"),
            "host=a dbname=app"
        );
        assert_eq!(with_database("", "my db"), "dbname='my db'");
        assert_eq!(with_database("host=a", "o'k"), "host=a dbname='o\\'k'");
        assert_eq!(
            with_database("postgresql://h:5", "my db"),
            "postgresql://h:5?dbname=my%20db"
        );
        assert_eq!(
            with_database("postgresql://h:5?sslmode=off", "x"),
            "postgresql://h:5?sslmode=off&dbname=x"
        );
        assert_eq!(
            with_database("postgresql://h/app", "x"),
            "postgresql://h/app"
        );
    }
}
