//! Version 3: the `meta` object store may hold write-ahead records (`crate::wal`,
//! format 1): writes that are durable there and not yet in `kv`. Nothing to convert (a
//! version-2 database has none); the step exists so that no build before this one,
//! which would not read them, can open a database that holds some.

pub fn run() {}
