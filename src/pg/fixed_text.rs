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

/// The string stored in `src` (up to its first NUL).
pub fn get(src: &[u8]) -> String {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

/// Whether `src` holds exactly `s`, compared in place (nothing allocated): for the lookups on
/// the path of every move.
pub fn equals(src: &[u8], s: &str) -> bool {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    &src[..end] == s.as_bytes()
}
