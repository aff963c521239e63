//! Bit and nibble packing into little-endian `u32` words (as bytes).

/// Packs 4-bit values (0..=15, low nibble first) two per byte. An odd count
/// gets a zero high nibble in the last byte.
pub fn pack_nibbles(values: &[u8]) -> Vec<u8> {
    values
        .chunks(2)
        .map(|p| (p[0] & 0xf) | (p.get(1).copied().unwrap_or(0) & 0xf) << 4)
        .collect()
}

/// Unpacks two 4-bit values per byte, low nibble first.
pub fn unpack_nibbles(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|&b| [b & 0xf, b >> 4]).collect()
}

/// Packs booleans as bits of `words` little-endian `u32` words: bit `i` is
/// bit `i % 32` of word `i / 32`. Unused bits are zero.
pub fn pack_bits(bits: &[bool], words: usize) -> Vec<u8> {
    let mut w = vec![0u32; words];
    for (i, &b) in bits.iter().enumerate().take(words * 32) {
        if b {
            w[i / 32] |= 1 << (i % 32);
        }
    }
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Unpacks the first `n` bits of little-endian `u32` words.
pub fn unpack_bits(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| {
            let byte = bytes.get(i / 8).copied().unwrap_or(0);
            byte >> (i % 8) & 1 == 1
        })
        .collect()
}
