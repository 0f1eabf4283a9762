//! Warren in the browser.
//!
//! The engine (`warren-core`) knows nothing of JavaScript; this crate is the browser's
//! edge: the IndexedDB backend of the engine's storage trait (with its numbered schema
//! migrations), and [`Warren`], the JavaScript binding: the engine's replica on
//! IndexedDB, synced over a WebSocket, in a dedicated worker or on the page. The pure
//! parts (the cache's spans, the key filter, the write-ahead records, the runs of the
//! next storage layout, the JSON writer, the byte comparison) build everywhere and are
//! tested natively; the rest only on wasm32.

pub mod filter;
pub mod json;
pub mod mem;
pub mod runs;
pub mod spans;
pub mod wal;

#[cfg(target_arch = "wasm32")]
pub mod client;
#[cfg(target_arch = "wasm32")]
pub mod idb;
#[cfg(target_arch = "wasm32")]
mod migrations;
#[cfg(target_arch = "wasm32")]
pub mod pack;

#[cfg(target_arch = "wasm32")]
pub use client::Warren;
#[cfg(target_arch = "wasm32")]
pub use idb::IdbStore;
