//! # Warren's sync server
//!
//! # Layout
//! - [`auth`]: token verification (HS256 secret; RS256/ES256 against a JWKS file or URL)
//!   and development tokens.
//! - [`log`]: the global log: the [`log::Log`] trait, the segmented, fsynced
//!   [`log::FileLog`], and [`log::MemoryLog`] for tests.

pub mod auth;
pub mod log;
