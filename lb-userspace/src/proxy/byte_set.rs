//! Sets of bytes as tables, for the parsers' checks of tokens and names.

/// A set of bytes as a table (one load a byte, where a search of the punctuation per byte
/// showed in every request's cost): ASCII letters and digits, `punctuation`, and with
/// `above_ascii` every byte above ASCII.
pub const fn byte_set(punctuation: &[u8], above_ascii: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || (above_ascii && !c.is_ascii());
        b += 1;
    }
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
}

/// A token's bytes (RFC 9110 §5.6.2): a field's name, a method, a coding.
pub const TCHAR: [bool; 256] = byte_set(b"!#$%&'*+-.^_`|~", false);
