//! The lines of an upstream's feed of moved slots (`slot_failover.slot_feed()`): one line per
//! moved slot, or one line saying that anything may have changed. Both ends use this module:
//! the upstream encodes, a standby's worker decodes.
//!
//! A line is words separated by single spaces: the upstream's change counter, then either `*`
//! (anything may have changed: the marks, or more moves than the upstream remembers) or the
//! slot's [`FIELDS`] fields. A field is `-` when NULL, else `=` followed by its value with
//! every byte outside `[A-Za-z0-9_.]` written as `%XX`. So a line holds no space, tab,
//! backslash or newline of its own, and `COPY ... TO STDOUT` (text format) passes it as it is.

/// How many fields a slot's line carries after the counter: the slot's row as
/// `standby::protocol::remote_slot` reads it (12 columns), then its database's OID.
pub const FIELDS: usize = 13;

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Anything may have changed as of this counter.
    Anything(i64),
    /// This slot moved; its fields as of this counter.
    Slot(i64, Vec<Option<String>>),
}

impl Line {
    pub fn counter(&self) -> i64 {
        match self {
            Line::Anything(c) | Line::Slot(c, _) => *c,
        }
    }
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

fn encode_field(out: &mut String, field: Option<&str>) {
    match field {
        None => out.push('-'),
        Some(v) => {
            out.push('=');
            for &b in v.as_bytes() {
                if plain(b) {
                    out.push(b as char);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.push('%');
                    out.push(HEX[usize::from(b >> 4)] as char);
                    out.push(HEX[usize::from(b & 0xf)] as char);
                }
            }
        }
    }
}

/// The line for `counter` and, when given, a slot's fields (else: anything may have changed).
pub fn encode(counter: i64, fields: Option<&[Option<String>]>) -> String {
    // Room for a typical slot's line, so that it is built without growing.
    let mut out = String::with_capacity(192);
    out.push_str(&counter.to_string());
    match fields {
        None => out.push_str(" *"),
        Some(fields) => {
            for f in fields {
                out.push(' ');
                encode_field(&mut out, f.as_deref());
            }
        }
    }
    out
}

fn decode_field(word: &str) -> Result<Option<String>, String> {
    if word == "-" {
        return Ok(None);
    }
    let value = word
        .strip_prefix('=')
        .ok_or_else(|| format!("bad field {word:?}"))?;
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .ok_or_else(|| format!("bad escape in {word:?}"))?;
                out.push(
                    u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape in {word:?}"))?,
                );
                i += 3;
            }
            b if plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(format!("bad byte in {word:?}")),
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| format!("field {word:?} is not UTF-8"))
}

/// Decode one line (a trailing newline is allowed).
pub fn decode(line: &str) -> Result<Line, String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut words = line.split(' ');
    let counter = words
        .next()
        .and_then(|c| c.parse::<i64>().ok())
        .ok_or_else(|| format!("feed line without a counter: {line:?}"))?;
    let mut rest: Vec<&str> = Vec::with_capacity(FIELDS);
    rest.extend(words);
    if rest == ["*"] {
        return Ok(Line::Anything(counter));
    }
    if rest.len() != FIELDS {
        return Err(format!(
            "feed line with {} fields, not {FIELDS}: {line:?}",
            rest.len()
        ));
    }
    let mut fields = Vec::with_capacity(FIELDS);
    for word in rest {
        fields.push(decode_field(word)?);
    }
    Ok(Line::Slot(counter, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(db: &str) -> Vec<Option<String>> {
        let mut f: Vec<Option<String>> = [
            "sub", "logical", db, "pgoutput", "50331816", "50332000", "745", "false", "false",
            "false", "true",
        ]
        .iter()
        .map(|s| Some(s.to_string()))
        .collect();
        f.push(None); // two_phase_at
        f.push(Some("5".into())); // database OID
        f
    }

    #[test]
    fn a_slot_line_round_trips_whatever_its_database_is_called() {
        for db in [
            "postgres",
            "my db",
            "a%b",
            "tab\there",
            "back\\slash",
            "naïve",
            "",
            "-",
            "=",
        ] {
            let fields = row(db);
            let line = encode(42, Some(&fields));
            assert!(
                line.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !line.contains('\\'),
                "{line:?}"
            );
            assert_eq!(line.split(' ').count(), 1 + FIELDS, "{line:?}");
            assert_eq!(decode(&format!("{line}\n")), Ok(Line::Slot(42, fields)));
        }
    }

    #[test]
    fn anything_round_trips() {
        assert_eq!(encode(7, None), "7 *");
        assert_eq!(decode("7 *\n"), Ok(Line::Anything(7)));
        assert_eq!(decode("7 *").unwrap().counter(), 7);
    }

    #[test]
    fn a_malformed_line_is_an_error_not_a_guess() {
        for bad in [
            "",
            "x *",
            "7",
            "7 * *",
            "7 =a",
            &format!("7{}", " =a".repeat(FIELDS + 1)),
            &format!("7 a{}", " -".repeat(FIELDS - 1)),
            &format!("7 =%4{}", " -".repeat(FIELDS - 1)),
            &format!("7 =%ZZ{}", " -".repeat(FIELDS - 1)),
            &format!("7 =a b{}", " -".repeat(FIELDS - 1)),
            &format!("7 =%FF{}", " -".repeat(FIELDS - 1)),
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
