//! Replication slot names, checked the way PostgreSQL checks them (slot.c,
//! `ReplicationSlotValidateName`): 1 to 63 bytes of lower-case ASCII letters, digits and
//! underscores. Pure logic, testable without a server.
//!
//! The SQL functions take the name as `text` rather than `name` so that an over-long name is
//! refused with a clear error instead of being cut to 63 bytes silently by the cast to `name`.

/// NAMEDATALEN - 1: the longest identifier PostgreSQL stores.
pub const MAX_SLOT_NAME_BYTES: usize = 63;

/// Why a slot name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadSlotName {
    Empty,
    TooLong { bytes: usize },
    BadCharacter { name: String },
}

/// Accept `name` as a replication slot name or say why not.
pub fn validate(name: &str) -> Result<&str, BadSlotName> {
    if name.is_empty() {
        return Err(BadSlotName::Empty);
    }
    if name.len() > MAX_SLOT_NAME_BYTES {
        return Err(BadSlotName::TooLong { bytes: name.len() });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(BadSlotName::BadCharacter {
            name: name.to_string(),
        });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_postgres_accepts() {
        for ok in ["a", "sub_1", "debezium", "0", "_", &"x".repeat(63)] {
            assert_eq!(validate(ok), Ok(ok));
        }
    }

    #[test]
    fn refuses_what_postgres_refuses() {
        assert_eq!(validate(""), Err(BadSlotName::Empty));
        assert_eq!(
            validate(&"x".repeat(64)),
            Err(BadSlotName::TooLong { bytes: 64 })
        );
        // 32 two-byte characters: 64 bytes, refused for length before characters.
        assert_eq!(
            validate(&"é".repeat(32)),
            Err(BadSlotName::TooLong { bytes: 64 })
        );
        for bad in [
            "Sub", "my-slot", "my slot", "slot\"", "café", "a.b", "x;drop",
        ] {
            assert_eq!(
                validate(bad),
                Err(BadSlotName::BadCharacter { name: bad.into() }),
                "{bad}"
            );
        }
    }
}
