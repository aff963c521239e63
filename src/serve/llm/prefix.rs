//! The prefix cache of a generative model's scheduler: the keys and values
//! of sequences that ended, keyed by the tokens they hold, kept in the free
//! room of the KV budget and dropped least recently used first.

use std::collections::VecDeque;

use crate::generate::cache::KvCache;

/// One kept cache: `cache` holds the positions of `tokens`.
struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
}

/// Kept caches, least recently used first.
#[derive(Default)]
pub(super) struct PrefixCache {
    entries: VecDeque<Entry>,
    positions: usize,
}

impl PrefixCache {
    /// Positions held by every kept cache.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Keeps `cache`, which holds the positions of `tokens[..cache.len]`.
    /// A kept cache whose tokens start the new one's is dropped (the new
    /// one holds it); a new one that an existing one holds only refreshes
    /// that one.
    pub fn keep(&mut self, tokens: &[u32], mut cache: KvCache) {
        let Some(tokens) = tokens.get(..cache.len) else {
            return;
        };
        if tokens.is_empty() {
            return;
        }
        if let Some(i) = self.entries.iter().position(|e| e.tokens.starts_with(tokens)) {
            if let Some(e) = self.entries.remove(i) {
                self.entries.push_back(e);
            }
            return;
        }
        let positions = &mut self.positions;
        self.entries.retain(|e| {
            let held = tokens.starts_with(&e.tokens);
            if held {
                *positions -= e.cache.len;
            }
            !held
        });
        cache.shrink_to_len();
        self.positions += cache.len;
        self.entries.push_back(Entry {
            tokens: tokens.to_vec(),
            cache,
        });
    }

    /// The kept cache sharing the longest prefix with `prompt`: its index
    /// and the length of that prefix.
    pub fn lookup(&self, prompt: &[u32]) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count()))
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(i, n)| (n, i))
    }

    /// Drops kept caches, least recently used first and `spare` last,
    /// until they hold at most `room` positions; returns where `spare` is
    /// now (`None` once dropped).
    pub fn shrink_to(&mut self, room: usize, mut spare: Option<usize>) -> Option<usize> {
        while self.positions > room {
            let victim = match spare {
                Some(0) if self.entries.len() > 1 => 1,
                Some(0) => {
                    spare = None;
                    0
                }
                _ => 0,
            };
            let Some(e) = self.entries.remove(victim) else {
                break;
            };
            self.positions -= e.cache.len;
            spare = spare.map(|s| if victim < s { s - 1 } else { s });
        }
        spare
    }

    /// Copies the first `n` positions of kept cache `i` into `cache` and
    /// marks it used; false when it cannot.
    pub fn copy_into(&mut self, i: usize, n: usize, cache: &mut KvCache) -> bool {
        let Some(e) = self.entries.remove(i) else {
            return false;
        };
        let copied = cache.copy_prefix(&e.cache, n);
        self.entries.push_back(e);
        copied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::cache::KvDtype;

    fn filled(len: usize) -> KvCache {
        let mut c = KvCache::new(1, len + 4, 2, KvDtype::F32);
        c.len = len;
        c
    }

    #[test]
    fn finds_the_longest_prefix_and_evicts_the_least_recently_used() {
        let mut p = PrefixCache::default();
        p.keep(&[1, 2, 3, 4], filled(4));
        p.keep(&[1, 2, 9], filled(3));
        p.keep(&[7, 8], filled(2));
        assert_eq!(p.positions(), 9);
        assert_eq!(p.lookup(&[1, 2, 3, 5]), Some((0, 3)));
        assert_eq!(p.lookup(&[5]), None);
        // Held by [1, 2, 3, 4]: nothing added.
        p.keep(&[1, 2, 3], filled(3));
        assert_eq!(p.positions(), 9);
        // Holds [7, 8]: replaces it.
        p.keep(&[7, 8, 6], filled(3));
        assert_eq!(p.positions(), 10);
        let (i, n) = p.lookup(&[1, 2, 9, 9]).expect("a hit");
        assert_eq!(n, 3);
        // Entries now: [1,2,9], [1,2,3,4], [7,8,6]; spare the first.
        let spare = p.shrink_to(3, Some(i));
        assert_eq!((spare, p.positions()), (Some(0), 3));
        let mut c = KvCache::new(1, 8, 2, KvDtype::F32);
        assert!(p.copy_into(0, 2, &mut c));
        assert_eq!(c.len, 2);
        assert_eq!(p.shrink_to(0, Some(0)), None);
        assert_eq!(p.positions(), 0);
    }
}
