//! Incremental detokenisation for serving: generated ids in, text that is safe to send out.
//! Two kinds of holdback keep a stream correct: text is released only once its last UTF-8
//! character is complete (a byte-level token can end mid-character), and a tail that could
//! still grow into a stop string is held until it either does (the text is cut before the
//! stop string and generation ends with `stop`) or cannot any more. Not a tokenizer: it
//! decodes through [`Decode`], so the rules are tested without a model.

use crate::EngineError;
use encore_models::tokenizer::Tokenizer;

/// Ids -> text, as a tokenizer decodes them (an incomplete trailing character comes out as
/// U+FFFD, as Hugging Face tokenizers do).
pub trait Decode {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError>;
}

impl Decode for Tokenizer {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError> {
        Ok(Tokenizer::decode(self, ids, skip_special_tokens)?)
    }
}

pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the decode window (one token of left context keeps a leading space right).
    prefix: usize,
    /// End of the ids whose text is in `text`.
    read: usize,
    skip_special_tokens: bool,
    stop: Vec<String>,
    /// Bytes of the longest stop string.
    max_stop: usize,
    /// Every complete character decoded so far, cut before a stop string once one is seen.
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    stopped: bool,
}

impl Detokenizer {
    pub fn new(stop: Vec<String>, skip_special_tokens: bool) -> Self {
        let max_stop = stop.iter().map(String::len).max().unwrap_or(0);
        Detokenizer {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special_tokens,
            stop,
            max_stop,
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds a generated id; returns the text it made safe to send (often empty). After a
    /// stop string was seen, ids are ignored.
    pub fn push(&mut self, dec: &dyn Decode, id: u32) -> Result<String, EngineError> {
        if self.stopped {
            return Ok(String::new());
        }
        self.ids.push(id);
        let done = dec.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens)?;
        let all = dec.decode(&self.ids[self.prefix..], self.skip_special_tokens)?;
        if all.len() > done.len() && !all.ends_with('\u{FFFD}') {
            let new = match all.strip_prefix(done.as_str()) {
                Some(rest) => rest.to_string(),
                None => all.get(done.len()..).unwrap_or_default().to_string(),
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            self.append(&new);
        }
        Ok(self.release(false))
    }

    /// Generation ended: returns everything not yet sent (an incomplete last character
    /// shows as U+FFFD; a stop string in it still cuts it).
    pub fn finish(&mut self, dec: &dyn Decode) -> Result<String, EngineError> {
        if !self.stopped && self.read < self.ids.len() {
            let done = dec.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens)?;
            let all = dec.decode(&self.ids[self.prefix..], self.skip_special_tokens)?;
            let new = all.get(done.len()..).unwrap_or_default().to_string();
            self.prefix = self.ids.len();
            self.read = self.ids.len();
            self.append(&new);
        }
        Ok(self.release(true))
    }

    /// True once a stop string was generated.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The text so far (cut before the stop string), sent or not.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn append(&mut self, new: &str) {
        let old_len = self.text.len();
        self.text.push_str(new);
        if self.stop.is_empty() {
            return;
        }
        // a stop string not found before must end in the new text
        let mut from = old_len.saturating_sub(self.max_stop.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self.stop.iter().filter_map(|s| self.text[from..].find(s.as_str())).min();
        if let Some(at) = hit {
            self.text.truncate(from + at);
            self.stopped = true;
        }
    }

    /// Hands out text up to the longest tail that could still start a stop string (all of
    /// it when `all`, or once stopped).
    fn release(&mut self, all: bool) -> String {
        let upto = if all || self.stopped { self.text.len() } else { self.text.len() - self.partial_stop_len() };
        let upto = upto.max(self.sent);
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        out
    }

    /// Bytes of the longest suffix of `text` that is a proper prefix of a stop string.
    fn partial_stop_len(&self) -> usize {
        let mut best = 0;
        for s in &self.stop {
            for k in (best + 1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each id stands for a byte string; decoding is lossy UTF-8, like a byte-level BPE.
    struct Bytes(Vec<Vec<u8>>);

    impl Decode for Bytes {
        fn decode(&self, ids: &[u32], _: bool) -> Result<String, EngineError> {
            let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.0[i as usize].clone()).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    /// Feeds pieces in order; returns the text of each push, and of finish.
    fn run(pieces: &[&[u8]], stop: &[&str]) -> (Vec<String>, String, bool) {
        let dec = Bytes(pieces.iter().map(|p| p.to_vec()).collect());
        let mut d = Detokenizer::new(stop.iter().map(|s| s.to_string()).collect(), true);
        let outs: Vec<String> = (0..pieces.len() as u32).map(|i| d.push(&dec, i).unwrap()).collect();
        let tail = d.finish(&dec).unwrap();
        (outs, tail, d.stopped())
    }

    #[test]
    fn multi_byte_characters_split_across_tokens_are_held_until_complete() {
        let s = "héllo 😀!";
        let b = s.as_bytes();
        // "h\xC3" | "\xA9llo " | "\xF0\x9F" | "\x98" | "\x80!"
        let pieces: Vec<&[u8]> = vec![&b[0..2], &b[2..7], &b[7..9], &b[9..10], &b[10..]];
        let (outs, tail, stopped) = run(&pieces, &[]);
        assert!(outs.iter().all(|o| !o.contains('\u{FFFD}')), "{outs:?}");
        assert_eq!(outs, vec!["", "héllo ", "", "", "😀!"]);
        assert_eq!(tail, "");
        assert!(!stopped);
    }

    #[test]
    fn stop_string_split_across_tokens_is_never_sent_and_cuts_the_text() {
        let (outs, tail, stopped) = run(&[b"Hel", b"lo E", b"N", b"D more", b"after"], &["END"]);
        assert_eq!(outs, vec!["Hel", "lo ", "", "", ""]);
        assert_eq!(tail, "");
        assert!(stopped);
    }

    #[test]
    fn a_partial_stop_that_does_not_complete_is_released() {
        let (outs, tail, stopped) = run(&[b"a E", b"Nx", b" EN"], &["END"]);
        assert_eq!(outs, vec!["a ", "ENx", " "]);
        assert_eq!(tail, "EN", "held-back text comes out at the end");
        assert!(!stopped);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (outs, _, stopped) = run(&[b"one two three"], &["three", "two"]);
        assert_eq!(outs, vec!["one "]);
        assert!(stopped);
    }

    #[test]
    fn a_stop_string_with_a_multi_byte_character_split_mid_byte() {
        let s = "ok é!".as_bytes();
        let (outs, _, stopped) = run(&[&s[..4], &s[4..]], &["é!"]);
        assert_eq!(outs.concat(), "ok ");
        assert!(stopped);
    }

    #[test]
    fn an_incomplete_last_character_flushes_as_replacement() {
        let (outs, tail, _) = run(&[b"ab", b"\xE2\x82"], &[]);
        assert_eq!(outs, vec!["ab", ""]);
        assert_eq!(tail, "\u{FFFD}");
    }

    #[test]
    fn a_stop_string_in_the_flushed_tail_still_cuts() {
        let (outs, tail, stopped) = run(&[b"x S", b"T"], &["ST!"]);
        assert_eq!(outs, vec!["x ", ""]);
        assert_eq!(tail, "ST", "not a stop: the text is released whole");
        assert!(!stopped);
        let (outs, tail, stopped) = run(&[b"x ST", b"!\xE2"], &["ST!"]);
        assert_eq!((outs.concat(), tail, stopped), ("x ".to_string(), String::new(), true));
    }
}
