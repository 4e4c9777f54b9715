//! Byte-pair-encoding token *counts* over one flat rank table.
//!
//! tiktoken-rs's `CoreBPE` keeps, per encoding, a `HashMap<Vec<u8>, Rank>`
//! encoder, the reverse decoder and a sorted token list: about 46 MiB
//! resident for `o200k_base`, 24 MiB for `cl100k_base`, a heap allocation
//! per token three times over (and ≈30 MiB of fragmented heap left behind
//! when one is dropped). Counting needs only "what is the rank of these
//! bytes", so the build script (`build.rs`) writes each vocabulary out of
//! tiktoken-rs once, and [`Counter`] loads it into one byte buffer and an
//! open-addressed `u32` index (≈5 MiB for `o200k_base`).
//!
//! The counting is tiktoken's own: the encoding's split pattern, then for
//! each piece one token if the piece is in the vocabulary, else the
//! byte-pair merges (lowest rank first, leftmost on ties). A test checks
//! it against `CoreBPE::encode_ordinary` on fixed and random texts.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;

/// The vocabularies `build.rs` wrote: per token, its rank (`u32` LE),
/// its length (`u16` LE) and its bytes.
pub const O200K_BASE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.ranks"));
pub const CL100K_BASE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.ranks"));

/// Pieces at least this long merge with a heap instead of rescanning
/// (tiktoken switches at the same length).
const LARGE_PIECE: usize = 100;

/// An encoding's split pattern and vocabulary, for counting.
pub struct Counter {
    split: fancy_regex::Regex,
    ranks: Ranks,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("tokens", &self.ranks.len())
            .finish_non_exhaustive()
    }
}

impl Counter {
    /// The counter of the vocabulary `ranks` (as `build.rs` writes it)
    /// split by `pattern`. `None` if the pattern does not compile or the
    /// vocabulary is empty or cut short.
    pub fn load(ranks: &[u8], pattern: &str) -> Option<Self> {
        let split = fancy_regex::Regex::new(pattern).ok()?;
        // Two passes over the records, so that the table is sized once.
        let (mut count, mut total) = (0, 0);
        for record in Records(ranks) {
            let (_, bytes) = record?;
            count += 1;
            total += bytes.len();
        }
        let mut table = Ranks::with_room(count, total);
        for (rank, bytes) in Records(ranks).flatten() {
            table.insert(rank, bytes);
        }
        (count > 0).then_some(Self {
            split,
            ranks: table,
        })
    }

    /// Tokens in `text`, as `CoreBPE::encode_ordinary(text).len()`.
    pub fn count(&self, text: &str) -> usize {
        let mut n = 0;
        let mut at = 0;
        for piece in self.split.find_iter(text) {
            let Ok(piece) = piece else {
                // The pattern's backtracking limit: the rest at four bytes
                // a token rather than nothing.
                return n + (text.len() - at).div_ceil(4);
            };
            at = piece.end();
            n += self.piece(piece.as_str().as_bytes());
        }
        n
    }

    fn piece(&self, piece: &[u8]) -> usize {
        if piece.len() <= 1 || self.ranks.get(piece).is_some() {
            return piece.len().min(1);
        }
        if piece.len() < LARGE_PIECE {
            self.merge_small(piece)
        } else {
            self.merge_large(piece)
        }
    }

    /// The rank of `piece[from..to]`, `u32::MAX` when it is no token.
    fn rank(&self, piece: &[u8], from: usize, to: usize) -> u32 {
        self.ranks.get(&piece[from..to]).unwrap_or(u32::MAX)
    }

    /// tiktoken's `_byte_pair_merge`: parts `(start, rank of merging it
    /// with the next)`, merging the lowest rank (leftmost on ties) until
    /// nothing merges; the count is the parts left.
    fn merge_small(&self, piece: &[u8]) -> usize {
        let mut parts: Vec<(usize, u32)> = (0..piece.len() - 1)
            .map(|i| (i, self.rank(piece, i, i + 2)))
            .collect();
        parts.push((piece.len() - 1, u32::MAX));
        parts.push((piece.len(), u32::MAX));
        // The rank of part j merged with the next once part j + 1 (still
        // in the list) has merged into j.
        let after_merge = |parts: &[(usize, u32)], j: usize| {
            if j + 3 < parts.len() {
                self.rank(piece, parts[j].0, parts[j + 3].0)
            } else {
                u32::MAX
            }
        };
        while let Some((i, _)) = parts[..parts.len() - 1]
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1 != u32::MAX)
            .min_by_key(|(i, p)| (p.1, *i))
        {
            if i > 0 {
                parts[i - 1].1 = after_merge(&parts, i - 1);
            }
            parts[i].1 = after_merge(&parts, i);
            parts.remove(i + 1);
        }
        parts.len() - 1
    }

    /// The same merges in O(n log n): parts as a linked list, candidate
    /// merges in a min-heap by (rank, start), stale entries skipped.
    fn merge_large(&self, piece: &[u8]) -> usize {
        let n = piece.len();
        // Part i starts at byte i; next[i] is the start of the part after
        // it (n: the end), prev[i] the one before (usize::MAX: none).
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        // The rank of merging part i with the part after it.
        let pair = |next: &[usize], i: usize| -> u32 {
            let j = next[i];
            if j >= n {
                return u32::MAX;
            }
            self.rank(piece, i, next[j])
        };
        // Per part, the rank of its merge with the next; `u32::MAX` for
        // none, and for a part swallowed by the one before it, so that its
        // heap entries read as stale.
        let mut ranks: Vec<u32> = (0..n).map(|i| pair(&next, i)).collect();
        let mut heap: BinaryHeap<Reverse<(u32, usize)>> = ranks
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != u32::MAX)
            .map(|(i, r)| Reverse((*r, i)))
            .collect();
        let mut parts = n;
        while let Some(Reverse((rank, i))) = heap.pop() {
            if ranks[i] != rank {
                continue;
            }
            // Part i swallows the part after it.
            let gone = next[i];
            ranks[gone] = u32::MAX;
            next[i] = next[gone];
            if next[i] < n {
                prev[next[i]] = i;
            }
            parts -= 1;
            ranks[i] = pair(&next, i);
            if ranks[i] != u32::MAX {
                heap.push(Reverse((ranks[i], i)));
            }
            let p = prev[i];
            if p != usize::MAX {
                ranks[p] = pair(&next, p);
                if ranks[p] != u32::MAX {
                    heap.push(Reverse((ranks[p], p)));
                }
            }
        }
        parts
    }
}

/// A vocabulary: token bytes to rank, without a heap allocation per token.
struct Ranks {
    /// Every token's bytes, back to back.
    bytes: Vec<u8>,
    /// Per entry: where its bytes start and end in `bytes`, and its rank.
    entries: Vec<(u32, u32, u32)>,
    /// Open addressing over `entries`: index + 1, 0 for an empty slot;
    /// a power of two at least twice the entries.
    slots: Vec<u32>,
    hasher: foldhash::fast::FixedState,
}

/// The records of a vocabulary file; `None` for a record cut short.
struct Records<'a>(&'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = Option<(u32, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let record = (|| {
            let (rank, after) = self.0.split_first_chunk::<4>()?;
            let (len, after) = after.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_le_bytes(*len));
            let bytes = after.get(..len)?;
            Some((u32::from_le_bytes(*rank), bytes, &after[len..]))
        })();
        match record {
            Some((rank, bytes, rest)) => {
                self.0 = rest;
                Some(Some((rank, bytes)))
            }
            None => {
                self.0 = &[];
                Some(None)
            }
        }
    }
}

impl Ranks {
    /// An empty table for `tokens` tokens of `bytes` bytes in all.
    fn with_room(tokens: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(tokens),
            slots: vec![0; (tokens * 2).next_power_of_two()],
            hasher: foldhash::fast::FixedState::with_seed(0x51ce),
        }
    }

    fn insert(&mut self, rank: u32, bytes: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(bytes);
        let entry = (start, self.bytes.len() as u32, rank);
        let mask = self.slots.len() - 1;
        let mut slot = self.hasher.hash_one(bytes) as usize & mask;
        while self.slots[slot] != 0 {
            slot = (slot + 1) & mask;
        }
        self.entries.push(entry);
        self.slots[slot] = self.entries.len() as u32;
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&self, key: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut slot = self.hasher.hash_one(key) as usize & mask;
        loop {
            let e = self.slots[slot];
            if e == 0 {
                return None;
            }
            let (start, end, rank) = self.entries[e as usize - 1];
            if &self.bytes[start as usize..end as usize] == key {
                return Some(rank);
            }
            slot = (slot + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tiktoken_rs::CoreBPE;

    use crate::tokens::{Encoding, reference};

    /// The counter as the sidecar loads it, and tiktoken-rs's encoder.
    fn both(encoding: Encoding) -> (&'static CoreBPE, &'static Counter) {
        (
            reference(encoding),
            encoding.counter().expect("bundled vocabulary loads"),
        )
    }

    const BOTH: [Encoding; 2] = [Encoding::O200kBase, Encoding::Cl100kBase];

    const TEXTS: &[&str] = &[
        "",
        "hi",
        "Hello, world! How are you doing today?",
        "  leading and trailing spaces   ",
        "tabs\tand\nnewlines\r\n\r\nand more\n\n\n",
        "numbers 1234567 3.14159 -42 1e10",
        "Ünïcödé: こんにちは世界 🌍🚀 Здравствуйте مرحبا",
        "fn main() { let x: Vec<u32> = (0..10).collect(); println!(\"{x:?}\"); }",
        "<|endoftext|> is not special in ordinary text",
        "don't won't I'm you're we've they'll she'd",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "https://example.com/path?query=1&other=2#fragment",
        "The sidecar counts tokens as tiktoken does: ünïcödé, 12345, \n\n  code();",
    ];

    #[test]
    fn counts_are_tiktokens_on_fixed_texts() {
        for (bpe, counter) in BOTH.map(both) {
            for text in TEXTS {
                assert_eq!(
                    counter.count(text),
                    bpe.encode_ordinary(text).len(),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn a_vocabulary_cut_short_is_refused() {
        let pattern = tiktoken_rs::O200K_BASE_PAT_STR;
        assert!(Counter::load(&O200K_BASE[..O200K_BASE.len() - 1], pattern).is_none());
        assert!(Counter::load(&[], pattern).is_none());
        assert!(Counter::load(O200K_BASE, "(unclosed").is_none());
    }

    #[test]
    fn long_pieces_merge_as_tiktoken_does() {
        // One piece of hundreds of bytes takes the heap path.
        let long = [
            " ".repeat(700),
            "=".repeat(333),
            "ab".repeat(260),
            "🌍".repeat(90),
            "x".repeat(1000),
            "%$#@!".repeat(60),
        ];
        for (bpe, counter) in BOTH.map(both) {
            for text in &long {
                assert_eq!(counter.count(text), bpe.encode_ordinary(text).len());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn counts_are_tiktokens_on_random_text(text in "\\PC{0,200}") {
            let (bpe, counter) = both(Encoding::O200kBase);
            prop_assert_eq!(counter.count(&text), bpe.encode_ordinary(&text).len());
        }

        #[test]
        fn counts_are_tiktokens_on_random_ascii(text in "[ -~\\t\\n]{0,400}") {
            for (bpe, counter) in BOTH.map(both) {
                prop_assert_eq!(counter.count(&text), bpe.encode_ordinary(&text).len());
            }
        }
    }
}
