//! A transaction's view of the state: the store with the transaction's own writes laid
//! over it, so a program reads what it has written (documents and index entries alike).

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::Error;
use crate::storage::{BatchOp, Entry, KeyRange, Storage};

pub(crate) struct TxnView<'s> {
    store: &'s dyn Storage,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'s> TxnView<'s> {
    pub fn new(store: &'s dyn Storage) -> TxnView<'s> {
        TxnView {
            store,
            overlay: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(key),
        }
    }

    /// Reads the base store, for "did this exist before the transaction".
    pub fn base_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.store.get(key)
    }

    pub fn write(&mut self, (k, v): BatchOp) {
        self.overlay.insert(k, v);
    }

    /// One page of the merged view: the entries of part of `range`, in order, and the
    /// rest of the range still to read (`None` when the range is exhausted). A page
    /// holds about `limit` entries, fewer or more where the transaction deleted or
    /// inserted keys in it; only the continuation says whether the range is done.
    pub fn scan_page(
        &self,
        range: &KeyRange,
        reverse: bool,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<KeyRange>), Error> {
        let base = self.store.scan(range, reverse, limit)?;
        // The part of the range this page speaks for: up to the last base key when the
        // page is full, the whole range otherwise.
        let (covered, rest) = match base.last() {
            Some((last, _)) if base.len() == limit => {
                if reverse {
                    (
                        KeyRange {
                            start: Bound::Included(last.clone()),
                            end: range.end.clone(),
                        },
                        Some(range.before(last)),
                    )
                } else {
                    (
                        KeyRange {
                            start: range.start.clone(),
                            end: Bound::Included(last.clone()),
                        },
                        Some(range.after(last)),
                    )
                }
            }
            _ => (range.clone(), None),
        };
        if self.overlay.is_empty() || covered.is_empty() {
            return Ok((base, rest));
        }
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let bounds = (as_ref(&covered.start), as_ref(&covered.end));
        for (k, v) in self.overlay.range::<[u8], _>(bounds) {
            merged.insert(k.clone(), v.clone());
        }
        let live = merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
        let out = if reverse {
            live.rev().collect()
        } else {
            live.collect()
        };
        Ok((out, rest))
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Batch, MemoryStore};

    #[test]
    fn merged_pages_see_own_writes_and_deletes() {
        let mut s = MemoryStore::new();
        let mut b = Batch::new();
        for i in 0..20u8 {
            b.put(vec![i * 2], vec![i]);
        }
        s.apply(b).unwrap();
        let mut v = TxnView::new(&s);
        v.write((vec![3], Some(vec![99]))); // insert between base keys
        v.write((vec![4], None)); // delete a base key
        v.write((vec![100], Some(vec![1]))); // beyond base
        for reverse in [false, true] {
            let mut seen = Vec::new();
            let mut range = Some(KeyRange::all());
            while let Some(r) = range {
                let (page, rest) = v.scan_page(&r, reverse, 3).unwrap();
                seen.extend(page.into_iter().map(|(k, _)| k[0]));
                range = rest;
            }
            let mut want: Vec<u8> = (0..20u8).map(|i| i * 2).filter(|k| *k != 4).collect();
            want.push(3);
            want.push(100);
            want.sort();
            if reverse {
                want.reverse();
            }
            assert_eq!(seen, want, "reverse={reverse}");
        }
    }
}
