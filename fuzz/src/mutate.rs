//! Input mutations for the stable runner: bit flips, random bytes, byte insertion and
//! deletion, truncation, chunk duplication, splicing with another corpus entry, and
//! integer fields overwritten with boundary values (0, 1, MAX, MAX-1, sign bits, powers of
//! two, the field +-1), little-endian at any width; for text inputs also numbers replaced by
//! boundary numbers and JSON / Jinja tokens inserted. A few are stacked per input.

/// xorshift64*: small, fast, reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Values that break size arithmetic, at 8 bytes; narrower widths take the low bytes.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    16,
    31,
    32,
    64,
    255,
    256,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    1 << 40,
    1 << 48,
    1 << 56,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// Numbers that break parsers of text formats.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "-0",
    "0.0",
    "1e309",
    "-1e309",
    "1e-320",
    "NaN",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "2.5",
    "1e18",
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "{}",
    "[]",
    "\"\":",
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "#}",
    "for x in range(99999)",
    "endfor",
    "if",
    "endif",
    "set ns.x = ",
    "loop",
    "~",
    "*",
    "|",
    "namespace(",
    "messages",
    "recursive",
    "\u{0}",
    "\u{1b}[2J",
    "\n",
    "é",
    "\u{FFFD}",
];

pub struct Mutator {
    pub rng: Rng,
    pub max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64, max_len: usize) -> Self {
        Mutator { rng: Rng::new(seed), max_len }
    }

    /// A mutated copy of `input`; `other` is another corpus entry for splicing.
    pub fn mutate(&mut self, input: &[u8], other: &[u8], text: bool) -> Vec<u8> {
        let mut v = input.to_vec();
        let rounds = 1 + self.rng.below(4);
        for _ in 0..rounds {
            let kinds = if text { 12 } else { 10 };
            match self.rng.below(kinds) {
                0 => self.flip_bits(&mut v),
                1 => self.random_byte(&mut v),
                2 => self.insert_bytes(&mut v),
                3 => self.delete_range(&mut v),
                4 => self.truncate(&mut v),
                5 => self.duplicate_chunk(&mut v),
                6 => self.splice(&mut v, other),
                7..=9 => self.interesting_int(&mut v),
                10 => self.replace_number(&mut v),
                _ => self.insert_token(&mut v),
            }
        }
        v.truncate(self.max_len);
        v
    }

    fn pos(&mut self, v: &[u8]) -> usize {
        if v.is_empty() {
            0
        } else {
            self.rng.below(v.len())
        }
    }

    fn flip_bits(&mut self, v: &mut [u8]) {
        if v.is_empty() {
            return;
        }
        for _ in 0..1 + self.rng.below(8) {
            let p = self.pos(v);
            v[p] ^= 1 << self.rng.below(8);
        }
    }

    fn random_byte(&mut self, v: &mut [u8]) {
        if !v.is_empty() {
            let p = self.pos(v);
            v[p] = self.rng.below(256) as u8;
        }
    }

    fn insert_bytes(&mut self, v: &mut Vec<u8>) {
        let p = if v.is_empty() { 0 } else { self.rng.below(v.len() + 1) };
        let n = 1 + self.rng.below(16);
        let bytes: Vec<u8> = (0..n).map(|_| self.rng.below(256) as u8).collect();
        v.splice(p..p, bytes);
    }

    fn delete_range(&mut self, v: &mut Vec<u8>) {
        if v.is_empty() {
            return;
        }
        let p = self.pos(v);
        let n = (1 + self.rng.below(64)).min(v.len() - p);
        v.drain(p..p + n);
    }

    fn truncate(&mut self, v: &mut Vec<u8>) {
        let p = self.pos(v);
        v.truncate(p);
    }

    fn duplicate_chunk(&mut self, v: &mut Vec<u8>) {
        if v.is_empty() {
            return;
        }
        let p = self.pos(v);
        let n = (1 + self.rng.below(256)).min(v.len() - p);
        let chunk = v[p..p + n].to_vec();
        let at = self.rng.below(v.len() + 1);
        v.splice(at..at, chunk);
    }

    fn splice(&mut self, v: &mut Vec<u8>, other: &[u8]) {
        if other.is_empty() {
            return;
        }
        let cut = self.rng.below(v.len() + 1);
        let from = self.rng.below(other.len());
        v.truncate(cut);
        v.extend_from_slice(&other[from..]);
    }

    /// A little-endian field of 1, 2, 4 or 8 bytes set to a boundary value, or to its own
    /// value +-1; aligned to its width half of the time (GGUF and safetensors headers are
    /// made of aligned little-endian fields).
    fn interesting_int(&mut self, v: &mut [u8]) {
        let width = [1usize, 2, 4, 8][self.rng.below(4)];
        if v.len() < width {
            return;
        }
        let mut p = self.rng.below(v.len() - width + 1);
        if self.rng.chance(2) {
            p -= p % width;
        }
        let field = &mut v[p..p + width];
        let mut cur = [0u8; 8];
        cur[..width].copy_from_slice(field);
        let cur = u64::from_le_bytes(cur);
        let value = match self.rng.below(4) {
            0 => cur.wrapping_add(1),
            1 => cur.wrapping_sub(1),
            _ => INTERESTING[self.rng.below(INTERESTING.len())],
        };
        field.copy_from_slice(&value.to_le_bytes()[..width]);
    }

    /// A run of ASCII digits (with its sign and fraction) replaced by a boundary number.
    fn replace_number(&mut self, v: &mut Vec<u8>) {
        let starts: Vec<usize> =
            (0..v.len()).filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit())).collect();
        if starts.is_empty() {
            return self.insert_token(v);
        }
        let s = starts[self.rng.below(starts.len())];
        let mut e = s;
        while e < v.len() && (v[e].is_ascii_digit() || v[e] == b'.' || v[e] == b'e' || v[e] == b'-') {
            e += 1;
        }
        let s = if s > 0 && v[s - 1] == b'-' { s - 1 } else { s };
        let n = NUMBERS[self.rng.below(NUMBERS.len())].as_bytes().to_vec();
        v.splice(s..e, n);
    }

    fn insert_token(&mut self, v: &mut Vec<u8>) {
        let p = if v.is_empty() { 0 } else { self.rng.below(v.len() + 1) };
        let t = TOKENS[self.rng.below(TOKENS.len())].as_bytes().to_vec();
        v.splice(p..p, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_reproducible_and_bounded() {
        let input = b"{\"hidden_size\": 64, \"x\": [1, 2]}".to_vec();
        let run = |seed| {
            let mut m = Mutator::new(seed, 48);
            (0..200).map(|_| m.mutate(&input, b"other", true)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).iter().all(|v| v.len() <= 48));
        assert!(run(7).iter().any(|v| v != &input));
    }

    #[test]
    fn integer_fields_get_boundary_values() {
        let mut m = Mutator::new(1, 1 << 20);
        let input = vec![0u8; 64];
        let seen_max = (0..2000).any(|_| {
            let mut v = input.clone();
            m.interesting_int(&mut v);
            v.windows(8).any(|w| w == u64::MAX.to_le_bytes())
        });
        assert!(seen_max);
    }
}
