//! Splitting a SQL script into statements, the way psql does when it reads a file: at
//! semicolons outside quotes, dollar quotes, comments and parentheses.
//!
//! [`Cluster::psql`](crate::Cluster::psql) runs each statement on its own (autocommit), like
//! `psql -f -` in PostgreSQL's own TAP tests, so that a test script can, say, create a logical
//! slot after another statement wrote something.

/// The statements of `sql`, trimmed, without their terminating semicolons; empty ones (and
/// ones that are only comments) dropped.
pub fn split(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    let mut has_code = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' | b'"' => {
                has_code = true;
                i = skip_quoted(bytes, i, c);
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(bytes, i);
                continue;
            }
            b'$' => {
                if let Some(tag_end) = dollar_tag_end(bytes, i) {
                    has_code = true;
                    let tag = &sql[i..=tag_end];
                    i = sql[tag_end + 1..]
                        .find(tag)
                        .map_or(bytes.len(), |n| tag_end + 1 + n + tag.len());
                    continue;
                }
                has_code = true;
            }
            b'(' => {
                has_code = true;
                depth += 1;
            }
            b')' => {
                has_code = true;
                depth = depth.saturating_sub(1);
            }
            b';' if depth == 0 => {
                if has_code {
                    out.push(sql[start..i].trim());
                }
                start = i + 1;
                has_code = false;
            }
            c if !c.is_ascii_whitespace() => has_code = true,
            _ => {}
        }
        i += 1;
    }
    if has_code {
        out.push(sql[start..].trim());
    }
    out
}

/// Past the closing quote of a '...' or "..." starting at `i` (doubled quotes stay inside).
fn skip_quoted(bytes: &[u8], i: usize, quote: u8) -> usize {
    let mut j = i + 1;
    while j < bytes.len() {
        if bytes[j] == quote {
            if bytes.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    bytes.len()
}

/// Past the end of a (possibly nested) /* ... */ comment starting at `i`.
fn skip_block_comment(bytes: &[u8], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j + 1 < bytes.len() {
        if bytes[j] == b'/' && bytes[j + 1] == b'*' {
            depth += 1;
            j += 2;
        } else if bytes[j] == b'*' && bytes[j + 1] == b'/' {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    bytes.len()
}

/// If a dollar-quote tag (`$$` or `$name$`) starts at `i`, the index of its closing `$`.
fn dollar_tag_end(bytes: &[u8], i: usize) -> Option<usize> {
    // $1, $2 are parameters, not tags; a tag cannot start with a digit.
    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
        return None;
    }
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'$' => return Some(j),
            b if b.is_ascii_alphabetic() || b == b'_' || (j > i + 1 && b.is_ascii_digit()) => {
                j += 1
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_at_top_level_semicolons() {
        assert_eq!(
            split("SELECT 1; SELECT 2;\n SELECT 3"),
            vec!["SELECT 1", "SELECT 2", "SELECT 3"]
        );
        assert_eq!(split("  ;; SELECT 1 ;  "), vec!["SELECT 1"]);
        assert_eq!(split(""), Vec::<&str>::new());
    }

    #[test]
    fn keeps_semicolons_inside_quotes_comments_and_dollar_quotes() {
        assert_eq!(
            split("SELECT 'a;b'; SELECT 'it''s;'"),
            vec!["SELECT 'a;b'", "SELECT 'it''s;'"]
        );
        assert_eq!(
            split(r#"SELECT 1 AS "x;y"; SELECT 2"#),
            vec![r#"SELECT 1 AS "x;y""#, "SELECT 2"]
        );
        assert_eq!(
            split("SELECT 1 -- a; comment\n; SELECT 2"),
            vec!["SELECT 1 -- a; comment", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT /* a; /* nested; */ b; */ 1; SELECT 2").len(),
            2
        );
        let body = "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$";
        assert_eq!(split(&format!("{body}; SELECT 3")), vec![body, "SELECT 3"]);
        let tagged = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$";
        assert_eq!(
            split(&format!("{tagged}; SELECT 3")),
            vec![tagged, "SELECT 3"]
        );
    }

    #[test]
    fn parameters_and_parentheses_are_not_boundaries() {
        assert_eq!(
            split("SELECT $1; SELECT $2"),
            vec!["SELECT $1", "SELECT $2"]
        );
        let rule = "CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2)";
        assert_eq!(split(&format!("{rule}; SELECT 3")), vec![rule, "SELECT 3"]);
    }

    #[test]
    fn comment_only_pieces_are_dropped() {
        assert_eq!(
            split("-- nothing here\n; /* nor here */ ; SELECT 1"),
            vec!["SELECT 1"]
        );
    }
}
