//! A store that records what is read through it.
//!
//! The client replica runs each pending commit and each live query through a
//! [`Recorder`], so it knows which keys (and which parts of which ranges) the result
//! depended on. When the base changes, only the commits and live queries that read a
//! changed key need to run again.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ops::Bound;

use super::{Batch, Entry, KeyRange, Storage};
use crate::error::{Error, ErrorCode};

/// What an evaluation read: single keys, and the parts of ranges a scan or a count
/// covered. A key outside all of them cannot have changed the evaluation's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub points: BTreeSet<Vec<u8>>,
    pub ranges: Vec<KeyRange>,
}

impl Reads {
    /// Whether a change of `key` may change what was read.
    pub fn touches(&self, key: &[u8]) -> bool {
        self.points.contains(key) || self.ranges.iter().any(|r| r.contains(key))
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.ranges.is_empty()
    }
}

/// Reads through `inner`, recording them; refuses writes.
pub struct Recorder<'a> {
    inner: &'a dyn Storage,
    reads: RefCell<Reads>,
}

impl<'a> Recorder<'a> {
    pub fn new(inner: &'a dyn Storage) -> Recorder<'a> {
        Recorder {
            inner,
            reads: RefCell::new(Reads::default()),
        }
    }

    /// What was read so far.
    pub fn into_reads(self) -> Reads {
        self.reads.into_inner()
    }
}

impl Storage for Recorder<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.reads.borrow_mut().points.insert(key.to_vec());
        self.inner.get(key)
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        let page = self.inner.scan(range, reverse, limit)?;
        if limit == 0 || range.is_empty() {
            return Ok(page);
        }
        // A full page speaks for the range up to its last key; a short one, for all of
        // it (a key added past a full page would not have been returned).
        let covered = match page.last() {
            Some((last, _)) if page.len() == limit => {
                if reverse {
                    KeyRange {
                        start: Bound::Included(last.clone()),
                        end: range.end.clone(),
                    }
                } else {
                    KeyRange {
                        start: range.start.clone(),
                        end: Bound::Included(last.clone()),
                    }
                }
            }
            _ => range.clone(),
        };
        self.reads.borrow_mut().ranges.push(covered);
        Ok(page)
    }

    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        if limit > 0 && !range.is_empty() {
            self.reads.borrow_mut().ranges.push(range.clone());
        }
        self.inner.count(range, limit)
    }

    fn is_partial(&self) -> bool {
        self.inner.is_partial()
    }

    fn apply(&mut self, _batch: Batch) -> Result<(), Error> {
        Err(Error::new(
            ErrorCode::ReadOnly,
            "a recording view is read-only",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[test]
    fn records_points_and_the_covered_part_of_ranges() {
        let mut s = MemoryStore::new();
        let mut b = Batch::new();
        for i in 0..10u8 {
            b.put(vec![i], vec![i]);
        }
        s.apply(b).unwrap();
        let r = Recorder::new(&s);
        r.get(&[3]).unwrap();
        assert_eq!(r.scan(&KeyRange::all(), false, 4).unwrap().len(), 4);
        assert_eq!(r.scan(&KeyRange::all(), true, 2).unwrap().len(), 2);
        assert_eq!(r.scan(&KeyRange::prefix(&[7]), false, 5).unwrap().len(), 1);
        assert_eq!(r.count(&KeyRange::all(), 100).unwrap(), 10);
        let reads = r.into_reads();
        assert!(reads.touches(&[3]));
        // The forward page of 4 covers keys 0..=3; the reverse page of 2, 8..; the
        // short page all of its range; the count everything.
        assert_eq!(reads.ranges[0].end, Bound::Included(vec![3]));
        assert_eq!(reads.ranges[1].start, Bound::Included(vec![8]));
        assert_eq!(reads.ranges[2], KeyRange::prefix(&[7]));
        assert_eq!(reads.ranges[3], KeyRange::all());
    }

    #[test]
    fn ranges_overlap_when_a_key_lies_in_both() {
        let r = |a: Bound<Vec<u8>>, b: Bound<Vec<u8>>| KeyRange { start: a, end: b };
        let inc = |k: u8| Bound::Included(vec![k]);
        let exc = |k: u8| Bound::Excluded(vec![k]);
        assert!(r(inc(1), inc(3)).overlaps(&r(inc(3), inc(5))));
        assert!(!r(inc(1), exc(3)).overlaps(&r(inc(3), inc(5))));
        assert!(!r(inc(1), inc(3)).overlaps(&r(exc(3), inc(5))));
        assert!(r(Bound::Unbounded, exc(2)).overlaps(&r(inc(1), Bound::Unbounded)));
        assert!(KeyRange::all().overlaps(&KeyRange::point(&[7])));
        assert!(!KeyRange::prefix(&[1]).overlaps(&KeyRange::prefix(&[2])));
        assert!(!r(inc(3), inc(1)).overlaps(&KeyRange::all()), "empty");
    }

    #[test]
    fn counts_agree_with_scans_through_an_overlay() {
        let mut s = MemoryStore::new();
        let mut b = Batch::new();
        for i in 0..20u8 {
            b.put(vec![i], vec![]);
        }
        s.apply(b).unwrap();
        let mut o = crate::storage::Overlay::new(&s);
        o.write((vec![3], None));
        o.write((vec![4], None));
        o.write((vec![50], Some(vec![])));
        o.write((vec![5], Some(vec![1])));
        for limit in [0, 1, 5, 17, 18, 19, 100] {
            let want = o.scan(&KeyRange::all(), false, 1000).unwrap().len() as u64;
            assert_eq!(o.count(&KeyRange::all(), limit).unwrap(), want.min(limit));
            assert_eq!(s.count(&KeyRange::all(), limit).unwrap(), 20u64.min(limit));
        }
        let r = KeyRange::prefix(&[4]);
        assert_eq!(o.count(&r, 10).unwrap(), 0);
    }
}
