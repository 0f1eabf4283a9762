//! What the cache holds exactly as IndexedDB does: disjoint spans of keys, each with
//! the time it was last used.
//!
//! A span is a half-open key interval `[start, end)` (`end` absent: to the end of the
//! key space). Every engine range is normalised to that form: an excluded start `k`
//! starts at `k 00` (the next key), an included end `k` ends before `k 00`. Spans that
//! overlap or touch are merged, so whether a range is covered is one lookup: the span
//! holding its start must reach its end. Pure Rust, no I/O: tested natively.

use std::collections::BTreeMap;
use std::ops::Bound;

use warren_core::storage::KeyRange;

/// The end of a span: before a key, or at the end of the key space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Before(Vec<u8>),
    Unbounded,
}

impl End {
    fn ge(&self, other: &End) -> bool {
        match (self, other) {
            (End::Unbounded, _) => true,
            (_, End::Unbounded) => false,
            (End::Before(a), End::Before(b)) => a >= b,
        }
    }

    /// Whether a span ending here reaches (touches or passes) a span starting at `start`.
    fn reaches(&self, start: &[u8]) -> bool {
        match self {
            End::Unbounded => true,
            End::Before(e) => e.as_slice() >= start,
        }
    }

    pub fn bound(&self) -> Bound<Vec<u8>> {
        match self {
            End::Before(e) => Bound::Excluded(e.clone()),
            End::Unbounded => Bound::Unbounded,
        }
    }
}

/// `k 00`: the smallest key after `k`.
pub fn successor(k: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(k.len() + 1);
    s.extend_from_slice(k);
    s.push(0);
    s
}

/// A range as `[start, end)`; `None` when it holds no key.
pub fn normalize(r: &KeyRange) -> Option<(Vec<u8>, End)> {
    let start = match &r.start {
        Bound::Unbounded => Vec::new(),
        Bound::Included(k) => k.clone(),
        Bound::Excluded(k) => successor(k),
    };
    let end = match &r.end {
        Bound::Unbounded => End::Unbounded,
        Bound::Excluded(k) => End::Before(k.clone()),
        Bound::Included(k) => End::Before(successor(k)),
    };
    match &end {
        End::Before(e) if *e <= start => None,
        _ => Some((start, end)),
    }
}

/// Whether `outer` holds every key of `inner` (an empty `inner` is held by any).
pub fn holds(outer: &KeyRange, inner: &KeyRange) -> bool {
    let Some((start, end)) = normalize(inner) else {
        return true;
    };
    normalize(outer).is_some_and(|(s, e)| s <= start && e.ge(&end))
}

/// `[start, end)` as an engine range.
pub fn to_range(start: &[u8], end: &End) -> KeyRange {
    KeyRange {
        start: Bound::Included(start.to_vec()),
        end: end.bound(),
    }
}

#[derive(Clone, Debug)]
struct Span {
    end: End,
    used: u64,
}

/// Bytes counted per span besides its keys (the map's node share, the keys' and the
/// end's headers, the time of use).
pub const SPAN_OVERHEAD: usize = 80;

fn span_bytes(start: &[u8], end: &End) -> usize {
    SPAN_OVERHEAD
        + start.len()
        + match end {
            End::Before(e) => e.len(),
            End::Unbounded => 0,
        }
}

/// Disjoint, merged spans by start key.
#[derive(Debug, Default)]
pub struct Spans {
    spans: BTreeMap<Vec<u8>, Span>,
    /// What the spans take in memory, about ([`SPAN_OVERHEAD`] each and their keys):
    /// counted in the cache's cap, since a span of a key the cache has no entry for
    /// (an absence) takes memory as an entry does.
    bytes: usize,
}

impl Spans {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The memory the spans take, about.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn insert(&mut self, start: Vec<u8>, span: Span) {
        self.bytes += span_bytes(&start, &span.end);
        if let Some(old) = self.spans.insert(start.clone(), span) {
            self.bytes -= span_bytes(&start, &old.end);
        }
    }

    fn take(&mut self, start: &[u8]) -> Option<Span> {
        let span = self.spans.remove(start)?;
        self.bytes -= span_bytes(start, &span.end);
        Some(span)
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The span holding key `k`: its start and end.
    fn holding(&self, k: &[u8]) -> Option<(&Vec<u8>, &Span)> {
        let (s, span) = self
            .spans
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(k)))
            .next_back()?;
        match &span.end {
            End::Before(e) if e.as_slice() <= k => None,
            _ => Some((s, span)),
        }
    }

    /// Whether every key of `r` is held; marks the span used at `now`.
    pub fn covers(&mut self, r: &KeyRange, now: u64) -> bool {
        let Some((start, end)) = normalize(r) else {
            return true;
        };
        self.covers_norm(&start, &end, now)
    }

    fn covers_norm(&mut self, start: &[u8], end: &End, now: u64) -> bool {
        let Some(s) = self.holding_all(start, end).cloned() else {
            return false;
        };
        if let Some(span) = self.spans.get_mut(&s) {
            span.used = now;
        }
        true
    }

    /// Whether every key of `r` is held (without marking anything used).
    pub fn holds_all(&self, r: &KeyRange) -> bool {
        normalize(r).is_none_or(|(start, end)| self.holding_all(&start, &end).is_some())
    }

    /// The start of the span holding every key from `start` to `end`, if one does.
    fn holding_all(&self, start: &[u8], end: &End) -> Option<&Vec<u8>> {
        let (s, span) = self.holding(start)?;
        span.end.ge(end).then_some(s)
    }

    /// Whether key `k` is held.
    pub fn holds(&mut self, k: &[u8], now: u64) -> bool {
        let Some((_, span)) = self
            .spans
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(k)))
            .next_back()
        else {
            return false;
        };
        if matches!(&span.end, End::Before(e) if e.as_slice() <= k) {
            return false;
        }
        span.used = now;
        true
    }

    /// The part of `r` held from its first key on (forward) or from its last key back
    /// (reverse), as `[start, end)`; `None` when its first (last) key is not held.
    pub fn held_part(&mut self, r: &KeyRange, reverse: bool, now: u64) -> Option<KeyRange> {
        let (start, end) = normalize(r)?;
        if !reverse {
            let (s, span) = self.holding(&start)?;
            let s = s.clone();
            let e = if span.end.ge(&end) {
                end
            } else {
                span.end.clone()
            };
            self.spans.get_mut(&s).expect("held").used = now;
            return Some(to_range(&start, &e));
        }
        // Reverse: the span holding the range's last key. The last key before an
        // exclusive end `e` is unknown, so look for the span that reaches `e` (or the
        // end of the key space) from below.
        let (s, span) = match &end {
            End::Unbounded => self.spans.iter().next_back()?,
            End::Before(e) => self
                .spans
                .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(e.as_slice())))
                .next_back()?,
        };
        if !span.end.ge(&end) {
            return None;
        }
        let s = s.clone();
        // The span starts below the range's end, so this is not empty.
        let from = if s > start { s.clone() } else { start };
        self.spans.get_mut(&s).expect("held").used = now;
        Some(to_range(&from, &end))
    }

    /// Adds `r`, merging it with every span it overlaps or touches.
    pub fn add(&mut self, r: &KeyRange, now: u64) {
        let Some((start, end)) = normalize(r) else {
            return;
        };
        self.add_norm(start, end, now);
    }

    pub fn add_point(&mut self, k: &[u8], now: u64) {
        self.add_norm(k.to_vec(), End::Before(successor(k)), now);
    }

    fn add_norm(&mut self, mut start: Vec<u8>, mut end: End, now: u64) {
        if let Some((s, span)) = self
            .spans
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(start.as_slice())))
            .next_back()
        {
            if span.end.reaches(&start) {
                let s = s.clone();
                let span = self.take(&s).expect("found");
                start = s;
                if span.end.ge(&end) {
                    end = span.end;
                }
            }
        }
        loop {
            let next = self
                .spans
                .range::<[u8], _>((Bound::Excluded(start.as_slice()), Bound::Unbounded))
                .next()
                .map(|(s, _)| s.clone());
            let Some(s) = next else { break };
            if !end.reaches(&s) {
                break;
            }
            let span = self.take(&s).expect("found");
            if span.end.ge(&end) {
                end = span.end;
            }
        }
        self.insert(start, Span { end, used: now });
    }

    /// The spans last used before `before`, oldest first: `(range, last used)`.
    pub fn unused_since(&self, before: u64) -> Vec<(KeyRange, u64)> {
        let mut out: Vec<(KeyRange, u64)> = self
            .spans
            .iter()
            .filter(|(_, s)| s.used < before)
            .map(|(k, s)| (to_range(k, &s.end), s.used))
            .collect();
        out.sort_by_key(|(_, used)| *used);
        out
    }

    /// Removes the span starting at `r`'s start (as given by [`Spans::unused_since`]).
    pub fn remove(&mut self, r: &KeyRange) {
        if let Some((start, _)) = normalize(r) {
            self.take(&start);
        }
    }

    /// Every span, for tests.
    pub fn all(&self) -> Vec<KeyRange> {
        self.spans
            .iter()
            .map(|(k, s)| to_range(k, &s.end))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &[u8], b: &[u8]) -> KeyRange {
        KeyRange {
            start: Bound::Included(a.to_vec()),
            end: Bound::Excluded(b.to_vec()),
        }
    }

    #[test]
    fn ranges_normalise_and_merge() {
        let mut s = Spans::default();
        s.add(&r(b"b", b"d"), 1);
        assert!(s.covers(&r(b"b", b"d"), 2));
        assert!(s.covers(&r(b"bb", b"c"), 2));
        assert!(!s.covers(&r(b"a", b"c"), 2));
        assert!(!s.covers(&r(b"c", b"e"), 2));
        // Touching spans merge: [b, d) + [d, f) = [b, f).
        s.add(&r(b"d", b"f"), 3);
        assert_eq!(s.len(), 1);
        assert!(s.covers(&r(b"c", b"e"), 4));
        // An excluded start is the next key: (f, ...) does not touch [b, f) ... f is
        // not held, so they stay apart.
        s.add(
            &KeyRange {
                start: Bound::Excluded(b"f".to_vec()),
                end: Bound::Excluded(b"h".to_vec()),
            },
            5,
        );
        assert_eq!(s.len(), 2);
        assert!(!s.holds(b"f", 6));
        s.add_point(b"f", 7);
        assert_eq!(s.len(), 1, "the point joins them");
        assert!(s.covers(&r(b"b", b"h"), 8));
        // Points inside a range are absorbed.
        s.add_point(b"x", 9);
        s.add_point(b"y", 9);
        s.add(&r(b"w", b"z"), 10);
        assert_eq!(s.len(), 2);
        // Unbounded ends.
        s.add(
            &KeyRange {
                start: Bound::Included(b"y".to_vec()),
                end: Bound::Unbounded,
            },
            11,
        );
        assert!(s.covers(
            &KeyRange {
                start: Bound::Included(b"w".to_vec()),
                end: Bound::Unbounded
            },
            12
        ));
        assert!(s.covers(&KeyRange::prefix(&[0xFF, 0xFF]), 12));
        // An empty range is always covered.
        assert!(s.covers(&r(b"q", b"a"), 12));
    }

    #[test]
    fn the_held_part_of_a_range() {
        let mut s = Spans::default();
        s.add(&r(b"b", b"d"), 1);
        assert_eq!(s.held_part(&r(b"b", b"z"), false, 2), Some(r(b"b", b"d")));
        assert_eq!(s.held_part(&r(b"c", b"cc"), false, 2), Some(r(b"c", b"cc")));
        assert_eq!(s.held_part(&r(b"a", b"z"), false, 2), None);
        // Reverse: from the end back.
        assert_eq!(s.held_part(&r(b"a", b"d"), true, 2), Some(r(b"b", b"d")));
        assert_eq!(s.held_part(&r(b"a", b"c"), true, 2), Some(r(b"b", b"c")));
        assert_eq!(s.held_part(&r(b"a", b"z"), true, 2), None);
        assert_eq!(s.held_part(&r(b"bb", b"c"), true, 2), Some(r(b"bb", b"c")));
    }

    #[test]
    fn a_range_holds_another() {
        assert!(holds(&r(b"b", b"d"), &r(b"b", b"d")));
        assert!(holds(&r(b"b", b"d"), &r(b"bb", b"c")));
        assert!(!holds(&r(b"b", b"d"), &r(b"a", b"c")));
        assert!(!holds(&r(b"b", b"d"), &r(b"c", b"e")));
        assert!(holds(&KeyRange::all(), &r(b"a", b"z")));
        assert!(!holds(&r(b"a", b"z"), &KeyRange::prefix(b"z")));
        // Anything holds an empty range; an empty one holds no key of another.
        assert!(holds(&r(b"c", b"c"), &r(b"d", b"d")));
        assert!(!holds(&r(b"c", b"c"), &r(b"a", b"b")));
    }

    /// The bytes counted follow every add, merge and removal.
    #[test]
    fn bytes_follow_the_spans() {
        let recount =
            |s: &Spans| -> usize { s.spans.iter().map(|(k, sp)| span_bytes(k, &sp.end)).sum() };
        let mut s = Spans::default();
        assert_eq!(s.bytes(), 0);
        for (i, k) in [b"d", b"a", b"f", b"b", b"e"].iter().enumerate() {
            s.add_point(*k, i as u64);
            assert_eq!(s.bytes(), recount(&s));
        }
        assert_eq!(s.len(), 5);
        assert_eq!(s.bytes(), 5 * (SPAN_OVERHEAD + 1 + 2));
        s.add(&r(b"a", b"e"), 9);
        assert_eq!(s.bytes(), recount(&s));
        s.add(
            &KeyRange {
                start: Bound::Included(b"x".to_vec()),
                end: Bound::Unbounded,
            },
            10,
        );
        assert_eq!(s.bytes(), recount(&s));
        for (range, _) in s.unused_since(u64::MAX) {
            s.remove(&range);
            assert_eq!(s.bytes(), recount(&s));
        }
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }

    #[test]
    fn least_recently_used_first() {
        let mut s = Spans::default();
        s.add_point(b"a", 1);
        s.add_point(b"c", 2);
        s.add_point(b"e", 3);
        assert!(s.holds(b"a", 4));
        let old = s.unused_since(4);
        assert_eq!(old.len(), 2);
        assert_eq!(old[0].1, 2, "c, then e; a was used at 4");
        s.remove(&old[0].0);
        assert!(!s.holds(b"c", 5));
        assert!(s.holds(b"e", 5));
    }
}
