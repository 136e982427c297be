//! Strings kept in fixed-size byte arrays, as shared memory keeps them: NUL-padded, cut at a
//! character boundary when too long.

/// Store `s` in `dst` (at most `dst.len() - 1` bytes of it, cut at a character boundary).
pub fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The bytes stored in `src` (up to its first NUL).
fn stored(src: &[u8]) -> &[u8] {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    &src[..end]
}

/// The string stored in `src` (up to its first NUL).
pub fn get(src: &[u8]) -> String {
    String::from_utf8_lossy(stored(src)).into_owned()
}

/// Whether `src` holds exactly `s`, compared in place (nothing allocated): for the lookups on
/// the path of every move.
pub fn equals(src: &[u8], s: &str) -> bool {
    stored(src) == s.as_bytes()
}
