//! Version 6: a run's record in `meta` may be of format 2, which lists its blocks' live
//! items (docs/STORAGE.md, "Runs"). Nothing to convert: a record of format 1 (every run
//! written before) is still read, and such a run is read, not counted from its record.
//! The step exists so that no build before this one, which refuses a record of format
//! 2, can open a database that holds one.

pub fn run() {}
