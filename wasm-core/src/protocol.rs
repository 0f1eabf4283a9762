//! The sync protocol's frames and the log's entries, as bytes.
//!
//! Shared by the server (native) and the client (native and wasm), so both sides encode
//! with the same code. Every frame starts with the protocol version and a type byte;
//! strings are varint-length-prefixed UTF-8, numbers LEB128 varints, values the
//! canonical encoding of [`crate::value`]. The byte format is specified in
//! `docs/PROTOCOL.md`. Decoding never panics and never allocates more than the input
//! could hold: malformed bytes give `CORRUPT`.

use crate::error::{Error, ErrorCode};
use crate::exec::{Commit, Op, Write};
use crate::value::{write_varint, Reader, Value};

/// The protocol version this build writes. Version 2 is version 1 with one more server
/// frame, a batch of frames in one message ([`ServerFrame::batch`]); every other frame
/// is the same bytes but for the version byte. A server speaks both: it answers a
/// client in the version of its `Hello`, and batches only for version 2.
pub const PROTOCOL_VERSION: u8 = 2;
/// The oldest protocol version still spoken (by the server, with older clients).
pub const OLDEST_PROTOCOL_VERSION: u8 = 1;

/// The claims of a JWT as their JSON text, decoded without verifying anything (the
/// server does): a client reads the token's `exp` from them, to ask for a fresh token
/// once it has passed rather than open a connection the server would refuse with
/// `TOKEN_EXPIRED`. `None` when the token is not a JWT.
pub fn token_claims(token: &str) -> Option<String> {
    use base64::Engine as _;
    // Between the first two dots, padding left out (bytes, not `str::split`: the
    // engine's module is smaller without it).
    let t = token.as_bytes();
    let start = t.iter().position(|&c| c == b'.')? + 1;
    let len = t[start..].iter().position(|&c| c == b'.')?;
    let mut claims = &t[start..start + len];
    while let [rest @ .., b'='] = claims {
        claims = rest;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Whether `v` is a protocol version this build reads.
pub fn supported_version(v: u8) -> bool {
    (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v)
}

/// A frame encoded by this build (version [`PROTOCOL_VERSION`]) as the same frame of
/// version `v`, for a connection that speaks `v` (frames other than a batch are the
/// same bytes in every version but the first).
pub fn in_version(frame: &[u8], v: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    if let Some(b) = out.first_mut() {
        *b = v;
    }
    out
}

/// Stable codes of protocol-level errors (sent in [`ServerFrame::Error`]). Commit
/// rejections use the engine's [`ErrorCode`] strings instead.
pub mod codes {
    /// The frame did not decode.
    pub const BAD_FRAME: &str = "BAD_FRAME";
    /// The client speaks a protocol version the server does not.
    pub const UNSUPPORTED_PROTOCOL: &str = "UNSUPPORTED_PROTOCOL";
    /// A frame other than `Hello` came first, or `Hello` came twice.
    pub const UNEXPECTED_FRAME: &str = "UNEXPECTED_FRAME";
    /// A frame is larger than the server accepts.
    pub const FRAME_TOO_LARGE: &str = "FRAME_TOO_LARGE";
    /// A push holds more commits than the server accepts.
    pub const TOO_MANY_COMMITS: &str = "TOO_MANY_COMMITS";
    /// The client id is empty, too long, or in use by another identity.
    pub const BAD_CLIENT_ID: &str = "BAD_CLIENT_ID";
    /// The client sends faster than its identity (its token's subject) may.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// The server, or the client's identity, holds as many connections as it may.
    pub const TOO_MANY_CONNECTIONS: &str = "TOO_MANY_CONNECTIONS";
    /// The client did not read fast enough; the server dropped it.
    pub const TOO_SLOW: &str = "TOO_SLOW";
    /// The server is shutting down; reconnect later.
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    /// Something went wrong in the server; nothing the client sent was lost.
    pub const INTERNAL: &str = "INTERNAL";
    /// The schema changed at a log position: reconnect, and the welcome carries the new
    /// one (the client re-runs its pending commits under it).
    pub const SCHEMA_CHANGED: &str = "SCHEMA_CHANGED";
    /// This server cannot serve reads now: it is still applying what its log held at
    /// its start (try again), or, a region of many, it cannot reach the global log or
    /// stopped (connect to another region of the deployment).
    pub const REGION_UNAVAILABLE: &str = "REGION_UNAVAILABLE";
    /// This region's state disagrees with another region's at the same log position;
    /// it stopped itself. Connect to another region.
    pub const REGION_DIVERGED: &str = "REGION_DIVERGED";

    /// Every protocol code, for tests and documentation checks.
    pub const ALL: &[&str] = &[
        BAD_FRAME,
        UNSUPPORTED_PROTOCOL,
        UNEXPECTED_FRAME,
        FRAME_TOO_LARGE,
        TOO_MANY_COMMITS,
        BAD_CLIENT_ID,
        RATE_LIMITED,
        TOO_MANY_CONNECTIONS,
        TOO_SLOW,
        SHUTTING_DOWN,
        INTERNAL,
        SCHEMA_CHANGED,
        REGION_UNAVAILABLE,
        REGION_DIVERGED,
    ];
}

/// A commit as a client sends it: the server adds the client id (from `Hello`), the
/// verified claims and the timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientCommit {
    pub seq: u64,
    pub schema_version: String,
    pub op: Op,
}

/// Frames from client to server.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame {
    /// First frame on a connection.
    Hello {
        client_id: String,
        token: String,
        schema_version: String,
        /// The lowest sequence number still in the client's outbox (0 if empty): the
        /// server answers with the outcomes it kept for `outbox_from..`.
        outbox_from: u64,
        /// The partitions the client holds, each with the log position it is current to.
        partitions: Vec<(String, u64)>,
    },
    Push {
        commits: Vec<ClientCommit>,
    },
    Ping {
        nonce: u64,
    },
    /// Ephemeral state for the others who read `partition` (who is editing, a cursor):
    /// opaque bytes, at most [`MAX_PRESENCE_BYTES`], never logged nor stored.
    Presence {
        partition: String,
        data: Vec<u8>,
    },
}

/// The most bytes of one presence message.
pub const MAX_PRESENCE_BYTES: usize = 1024;

/// A document in a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotDoc {
    pub collection: String,
    pub id: String,
    pub version: u64,
    pub data: Value,
}

/// How the server settled one commit.
#[derive(Clone, Debug, PartialEq)]
pub enum CommitResult {
    Committed {
        position: u64,
        result: Value,
    },
    Rejected {
        code: String,
        message: String,
    },
    /// Applied before; its outcome is no longer kept (the client's view is already
    /// correct through its partitions).
    Duplicate,
    /// The sequence number skips ahead; send `expected` first.
    OutOfOrder {
        expected: u64,
    },
}

/// Frames from server to client.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerFrame {
    Welcome {
        schema_version: String,
        schema_source: String,
        /// The log position the server has applied; snapshots that follow are at it.
        position: u64,
        /// The client's highest applied sequence number.
        applied_seq: u64,
        /// Every partition the client may read now.
        partitions: Vec<String>,
    },
    /// The whole content of a partition at `position`: it replaces what the client had.
    Snapshot {
        partition: String,
        position: u64,
        docs: Vec<SnapshotDoc>,
    },
    /// The first documents of a large partition's snapshot at `position`: more parts
    /// may follow, then the `Snapshot` with the same partition and position and the
    /// last documents. The client keeps the parts aside and replaces the partition with
    /// all of them together when the `Snapshot` comes (`docs/PROTOCOL.md`).
    SnapshotPart {
        partition: String,
        position: u64,
        docs: Vec<SnapshotDoc>,
    },
    /// The client may no longer read `partition`: drop it (from `position` on).
    Drop {
        partition: String,
        position: u64,
    },
    /// The writes of the log entry at `position` to partitions the client holds.
    Effects {
        position: u64,
        writes: Vec<Write>,
    },
    /// The outcome of one of the client's own commits.
    Outcome {
        seq: u64,
        result: CommitResult,
    },
    /// A protocol error; the server closes the connection after it.
    Error {
        code: String,
        message: String,
    },
    Pong {
        nonce: u64,
    },
    /// Another connection's presence in a partition this connection holds; `from` is
    /// its verified `sub`.
    Presence {
        partition: String,
        from: String,
        data: Vec<u8>,
    },
}

// Frame type bytes. Client frames are below 0x80, server frames above.
const F_HELLO: u8 = 0x01;
const F_PUSH: u8 = 0x02;
const F_PING: u8 = 0x03;
const F_WELCOME: u8 = 0x81;
const F_SNAPSHOT: u8 = 0x82;
const F_DROP: u8 = 0x83;
const F_EFFECTS: u8 = 0x84;
const F_OUTCOME: u8 = 0x85;
const F_ERROR: u8 = 0x86;
const F_PONG: u8 = 0x87;
const F_SNAPSHOT_PART: u8 = 0x88;
const F_PRESENCE: u8 = 0x04;
const F_PRESENCE_OUT: u8 = 0x89;
/// Version 2: several server frames in one message.
const F_BATCH: u8 = 0x8A;

// Log entry kinds.
const E_COMMIT: u8 = 0x01;
const E_SCHEMA: u8 = 0x02;

fn put_str(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_op(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Call { function, args } => {
            out.push(0);
            put_str(out, function);
            args.encode_into(out);
        }
        Op::Run { source } => {
            out.push(1);
            put_str(out, source);
        }
    }
}

fn read_op(r: &mut Reader) -> Result<Op, Error> {
    Ok(match r.byte()? {
        0 => Op::Call {
            function: r.string()?,
            args: r.value(0)?,
        },
        1 => Op::Run {
            source: r.string()?,
        },
        t => return Err(corrupt(&format!("unknown op kind {t}"))),
    })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A presence message's bytes: a length, at most [`MAX_PRESENCE_BYTES`], then them.
fn presence_data(r: &mut Reader) -> Result<Vec<u8>, Error> {
    let n = count(r, 1)?;
    if n > MAX_PRESENCE_BYTES {
        return Err(corrupt(&format!(
            "a presence message holds at most {MAX_PRESENCE_BYTES} bytes"
        )));
    }
    let b = r.buf[r.pos..r.pos + n].to_vec();
    r.pos += n;
    Ok(b)
}

fn corrupt(msg: &str) -> Error {
    Error::new(ErrorCode::Corrupt, format!("bad frame: {msg}"))
}

/// A count read from the wire, refused when it could not fit in the bytes left (each
/// item takes at least `min_item` bytes), so a hostile count cannot force a huge
/// allocation.
fn count(r: &mut Reader, min_item: usize) -> Result<usize, Error> {
    let n = r.varint()?;
    let left = (r.buf.len() - r.pos) as u64;
    if n.saturating_mul(min_item as u64) > left {
        return Err(corrupt("count larger than the frame"));
    }
    Ok(n as usize)
}

fn finish(r: &Reader) -> Result<(), Error> {
    if r.pos == r.buf.len() {
        Ok(())
    } else {
        Err(corrupt("trailing bytes"))
    }
}

/// A reader past the version byte of a frame, refusing a protocol version this build
/// does not speak.
fn open_frame(bytes: &[u8]) -> Result<Reader<'_>, Error> {
    let mut r = Reader::new(bytes);
    let v = r.byte()?;
    if !supported_version(v) {
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!(
                "protocol version {v} is not supported (this side speaks \
                 {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
            ),
        ));
    }
    Ok(r)
}

/// The protocol version of a frame, without decoding the rest (so a server can answer
/// an unknown version with a clear error).
pub fn frame_version(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

/// A `Push` frame of `commits` (each its sequence number, schema version and
/// operation), encoded as [`ClientFrame::encode`] encodes it, from borrowed parts.
pub fn encode_push<'a>(commits: impl ExactSizeIterator<Item = (u64, &'a str, &'a Op)>) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION, F_PUSH];
    write_varint(&mut out, commits.len() as u64);
    for (seq, schema_version, op) in commits {
        write_varint(&mut out, seq);
        put_str(&mut out, schema_version);
        put_op(&mut out, op);
    }
    out
}

impl ClientFrame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION];
        match self {
            ClientFrame::Hello {
                client_id,
                token,
                schema_version,
                outbox_from,
                partitions,
            } => {
                out.push(F_HELLO);
                put_str(&mut out, client_id);
                put_str(&mut out, token);
                put_str(&mut out, schema_version);
                write_varint(&mut out, *outbox_from);
                write_varint(&mut out, partitions.len() as u64);
                for (p, c) in partitions {
                    put_str(&mut out, p);
                    write_varint(&mut out, *c);
                }
            }
            ClientFrame::Push { commits } => {
                return encode_push(
                    commits
                        .iter()
                        .map(|c| (c.seq, c.schema_version.as_str(), &c.op)),
                );
            }
            ClientFrame::Ping { nonce } => {
                out.push(F_PING);
                write_varint(&mut out, *nonce);
            }
            ClientFrame::Presence { partition, data } => {
                out.push(F_PRESENCE);
                put_str(&mut out, partition);
                put_bytes(&mut out, data);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ClientFrame, Error> {
        let mut r = open_frame(bytes)?;
        let f = match r.byte()? {
            F_HELLO => {
                let client_id = r.string()?;
                let token = r.string()?;
                let schema_version = r.string()?;
                let outbox_from = r.varint()?;
                let n = count(&mut r, 2)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push((r.string()?, r.varint()?));
                }
                ClientFrame::Hello {
                    client_id,
                    token,
                    schema_version,
                    outbox_from,
                    partitions,
                }
            }
            F_PUSH => {
                let n = count(&mut r, 4)?;
                let mut commits = Vec::with_capacity(n);
                for _ in 0..n {
                    commits.push(ClientCommit {
                        seq: r.varint()?,
                        schema_version: r.string()?,
                        op: read_op(&mut r)?,
                    });
                }
                ClientFrame::Push { commits }
            }
            F_PING => ClientFrame::Ping { nonce: r.varint()? },
            F_PRESENCE => ClientFrame::Presence {
                partition: r.string()?,
                data: presence_data(&mut r)?,
            },
            t => return Err(corrupt(&format!("unknown client frame type {t:#04x}"))),
        };
        finish(&r)?;
        Ok(f)
    }
}

fn put_write(out: &mut Vec<u8>, w: &Write) {
    put_str(out, &w.collection);
    put_str(out, &w.id);
    put_str(out, &w.partition);
    write_varint(out, w.version);
    match &w.data {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            d.encode_into(out);
        }
    }
}

fn read_write(r: &mut Reader) -> Result<Write, Error> {
    Ok(Write {
        collection: r.string()?,
        id: r.string()?,
        partition: r.string()?,
        version: r.varint()?,
        data: match r.byte()? {
            0 => None,
            1 => Some(r.value(0)?),
            t => return Err(corrupt(&format!("unknown write kind {t}"))),
        },
    })
}

impl ServerFrame {
    /// Whether `bytes` hold a `Welcome` frame, read from its type byte alone (the
    /// frame is not checked: [`ServerFrame::decode`] does that).
    pub fn is_welcome(bytes: &[u8]) -> bool {
        bytes.first().is_some_and(|v| supported_version(*v)) && bytes.get(1) == Some(&F_WELCOME)
    }

    /// Whether `bytes` hold a batch of frames (protocol version 2), read from its type
    /// byte alone (as [`ServerFrame::is_welcome`]).
    pub fn is_batch(bytes: &[u8]) -> bool {
        bytes.get(1) == Some(&F_BATCH)
    }

    /// Frames encoded by this build (none of them a batch), as one message of version
    /// 2: `02 8A`, their count, then each as its length and its bytes. What a client
    /// reads with [`ServerFrame::unbatch`].
    pub fn batch<'a>(frames: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION, F_BATCH];
        write_varint(&mut out, frames.len() as u64);
        for f in frames {
            put_bytes(&mut out, f);
        }
        out
    }

    /// Every frame of a message from the server (see [`ServerFrame::unbatch`]), decoded.
    pub fn decode_message(message: &[u8]) -> Result<Vec<ServerFrame>, Error> {
        ServerFrame::unbatch(message)?
            .into_iter()
            .map(ServerFrame::decode)
            .collect()
    }

    /// The frames of a message from the server: those of a batch (version 2), or the
    /// message itself. Each frame of a batch is of version 2 and not a batch; it is
    /// checked whole when it is decoded. Nothing is allocated for a count the bytes
    /// cannot hold.
    pub fn unbatch(message: &[u8]) -> Result<Vec<&[u8]>, Error> {
        if !ServerFrame::is_batch(message) {
            return Ok(vec![message]);
        }
        let mut r = open_frame(message)?;
        r.byte()?;
        if message[0] < 2 {
            return Err(corrupt("a batch in protocol version 1"));
        }
        // Each frame takes at least its length byte and its version and type bytes.
        let n = count(&mut r, 3)?;
        if n == 0 {
            return Err(corrupt("an empty batch"));
        }
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            let len = count(&mut r, 1)?;
            let f = r.take(len)?;
            if f.first() != Some(&message[0]) || f.get(1) == Some(&F_BATCH) {
                return Err(corrupt("a batch's frame of another version, or a batch"));
            }
            frames.push(f);
        }
        finish(&r)?;
        Ok(frames)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION];
        match self {
            ServerFrame::Welcome {
                schema_version,
                schema_source,
                position,
                applied_seq,
                partitions,
            } => {
                out.push(F_WELCOME);
                put_str(&mut out, schema_version);
                put_str(&mut out, schema_source);
                write_varint(&mut out, *position);
                write_varint(&mut out, *applied_seq);
                write_varint(&mut out, partitions.len() as u64);
                for p in partitions {
                    put_str(&mut out, p);
                }
            }
            ServerFrame::Snapshot {
                partition,
                position,
                docs,
            }
            | ServerFrame::SnapshotPart {
                partition,
                position,
                docs,
            } => {
                out.push(if matches!(self, ServerFrame::Snapshot { .. }) {
                    F_SNAPSHOT
                } else {
                    F_SNAPSHOT_PART
                });
                put_str(&mut out, partition);
                write_varint(&mut out, *position);
                write_varint(&mut out, docs.len() as u64);
                for d in docs {
                    put_str(&mut out, &d.collection);
                    put_str(&mut out, &d.id);
                    write_varint(&mut out, d.version);
                    d.data.encode_into(&mut out);
                }
            }
            ServerFrame::Drop {
                partition,
                position,
            } => {
                out.push(F_DROP);
                put_str(&mut out, partition);
                write_varint(&mut out, *position);
            }
            ServerFrame::Effects { position, writes } => {
                out.push(F_EFFECTS);
                write_varint(&mut out, *position);
                write_varint(&mut out, writes.len() as u64);
                for w in writes {
                    put_write(&mut out, w);
                }
            }
            ServerFrame::Outcome { seq, result } => {
                out.push(F_OUTCOME);
                write_varint(&mut out, *seq);
                match result {
                    CommitResult::Committed { position, result } => {
                        out.push(0);
                        write_varint(&mut out, *position);
                        result.encode_into(&mut out);
                    }
                    CommitResult::Rejected { code, message } => {
                        out.push(1);
                        put_str(&mut out, code);
                        put_str(&mut out, message);
                    }
                    CommitResult::Duplicate => out.push(2),
                    CommitResult::OutOfOrder { expected } => {
                        out.push(3);
                        write_varint(&mut out, *expected);
                    }
                }
            }
            ServerFrame::Error { code, message } => {
                out.push(F_ERROR);
                put_str(&mut out, code);
                put_str(&mut out, message);
            }
            ServerFrame::Pong { nonce } => {
                out.push(F_PONG);
                write_varint(&mut out, *nonce);
            }
            ServerFrame::Presence {
                partition,
                from,
                data,
            } => {
                out.push(F_PRESENCE_OUT);
                put_str(&mut out, partition);
                put_str(&mut out, from);
                put_bytes(&mut out, data);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ServerFrame, Error> {
        let mut r = open_frame(bytes)?;
        let f = match r.byte()? {
            F_WELCOME => {
                let schema_version = r.string()?;
                let schema_source = r.string()?;
                let position = r.varint()?;
                let applied_seq = r.varint()?;
                let n = count(&mut r, 1)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(r.string()?);
                }
                ServerFrame::Welcome {
                    schema_version,
                    schema_source,
                    position,
                    applied_seq,
                    partitions,
                }
            }
            kind @ (F_SNAPSHOT | F_SNAPSHOT_PART) => {
                let partition = r.string()?;
                let position = r.varint()?;
                let n = count(&mut r, 4)?;
                let mut docs = Vec::with_capacity(n);
                for _ in 0..n {
                    docs.push(SnapshotDoc {
                        collection: r.string()?,
                        id: r.string()?,
                        version: r.varint()?,
                        data: r.value(0)?,
                    });
                }
                if kind == F_SNAPSHOT {
                    ServerFrame::Snapshot {
                        partition,
                        position,
                        docs,
                    }
                } else {
                    ServerFrame::SnapshotPart {
                        partition,
                        position,
                        docs,
                    }
                }
            }
            F_DROP => ServerFrame::Drop {
                partition: r.string()?,
                position: r.varint()?,
            },
            F_EFFECTS => {
                let position = r.varint()?;
                let n = count(&mut r, 5)?;
                let mut writes = Vec::with_capacity(n);
                for _ in 0..n {
                    writes.push(read_write(&mut r)?);
                }
                ServerFrame::Effects { position, writes }
            }
            F_OUTCOME => {
                let seq = r.varint()?;
                let result = match r.byte()? {
                    0 => CommitResult::Committed {
                        position: r.varint()?,
                        result: r.value(0)?,
                    },
                    1 => CommitResult::Rejected {
                        code: r.string()?,
                        message: r.string()?,
                    },
                    2 => CommitResult::Duplicate,
                    3 => CommitResult::OutOfOrder {
                        expected: r.varint()?,
                    },
                    t => return Err(corrupt(&format!("unknown outcome kind {t}"))),
                };
                ServerFrame::Outcome { seq, result }
            }
            F_ERROR => ServerFrame::Error {
                code: r.string()?,
                message: r.string()?,
            },
            F_PONG => ServerFrame::Pong { nonce: r.varint()? },
            F_PRESENCE_OUT => ServerFrame::Presence {
                partition: r.string()?,
                from: r.string()?,
                data: presence_data(&mut r)?,
            },
            t => return Err(corrupt(&format!("unknown server frame type {t:#04x}"))),
        };
        finish(&r)?;
        Ok(f)
    }
}

/// An entry of the global log: what every region applies, in log order, to reach the
/// same state. Byte format in `docs/PROTOCOL.md` ("The log entry").
#[derive(Clone, Debug, PartialEq)]
pub enum LogEntry {
    /// A commit with what the gateway verified and the sequencer fixed (kind `01`).
    Commit(Commit),
    /// A change of the schema in force, from this entry's position on (kind `02`).
    Schema(SchemaChange),
}

/// A schema change as it stands in the log: the whole new source. Whether it parses
/// and fits the data is decided when the entry is applied, the same way everywhere
/// (`warren_core::entry`).
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaChange {
    pub source: String,
}

fn put_commit(out: &mut Vec<u8>, c: &Commit) {
    out.push(E_COMMIT);
    put_str(out, &c.client_id);
    write_varint(out, c.client_seq);
    put_str(out, &c.schema_version);
    write_varint(out, c.timestamp as u64);
    c.auth.encode_into(out);
    put_op(out, &c.op);
}

fn read_commit(r: &mut Reader) -> Result<Commit, Error> {
    Ok(Commit {
        client_id: r.string()?,
        client_seq: r.varint()?,
        schema_version: r.string()?,
        timestamp: r.varint()? as i64,
        auth: r.value(0)?,
        op: read_op(r)?,
    })
}

impl LogEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            LogEntry::Commit(c) => put_commit(&mut out, c),
            LogEntry::Schema(s) => {
                out.push(E_SCHEMA);
                put_str(&mut out, &s.source);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<LogEntry, Error> {
        let mut r = Reader::new(bytes);
        let e = match r.byte()? {
            E_COMMIT => LogEntry::Commit(read_commit(&mut r)?),
            E_SCHEMA => LogEntry::Schema(SchemaChange {
                source: r.string()?,
            }),
            t => return Err(corrupt(&format!("unknown log entry kind {t}"))),
        };
        finish(&r)?;
        Ok(e)
    }
}

/// A commit's log entry (kind `01`): each commit in the server's log and in a client
/// replica's outbox.
pub fn encode_log_entry(c: &Commit) -> Vec<u8> {
    let mut out = Vec::new();
    put_commit(&mut out, c);
    out
}

/// A commit's log entry; any other kind is refused (a client's outbox holds only
/// commits).
pub fn decode_log_entry(bytes: &[u8]) -> Result<Commit, Error> {
    match LogEntry::decode(bytes)? {
        LogEntry::Commit(c) => Ok(c),
        LogEntry::Schema(_) => Err(corrupt("a schema entry where a commit was expected")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::obj;

    #[test]
    fn a_tokens_claims_are_decoded() {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let claims = r#"{"sub":"ann?>","exp":1700000000}"#;
        let jwt = format!("{}.{}.sig", b(r#"{"alg":"HS256"}"#), b(claims));
        assert!(jwt.contains('_'), "the URL-safe alphabet: {jwt}");
        assert_eq!(token_claims(&jwt).as_deref(), Some(claims));
        // Padded claims too.
        let padded = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":50}"#)
        );
        assert!(padded.contains('='));
        assert_eq!(token_claims(&padded).as_deref(), Some(r#"{"exp":50}"#));
        for bad in ["opaque-token", "a.!!!.c", "", "a..c"] {
            assert!(token_claims(bad).is_none_or(|c| c.is_empty()), "{bad}");
        }
        let not_utf8 = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe])
        );
        assert_eq!(token_claims(&not_utf8), None);
    }

    fn samples() -> (Vec<ClientFrame>, Vec<ServerFrame>) {
        let op = Op::Call {
            function: "toggle".into(),
            args: obj([("id", "a".into())]),
        };
        let client = vec![
            ClientFrame::Hello {
                client_id: "c1".into(),
                token: "t.o.k".into(),
                schema_version: "abc".into(),
                outbox_from: 3,
                partitions: vec![("user:ann".into(), 42), ("team:t".into(), 0)],
            },
            ClientFrame::Push {
                commits: vec![
                    ClientCommit {
                        seq: 3,
                        schema_version: "abc".into(),
                        op: op.clone(),
                    },
                    ClientCommit {
                        seq: 4,
                        schema_version: "abc".into(),
                        op: Op::Run {
                            source: "1 + 1".into(),
                        },
                    },
                ],
            },
            ClientFrame::Ping { nonce: u64::MAX },
            ClientFrame::Presence {
                partition: "team:t".into(),
                data: vec![0, 1, 255],
            },
        ];
        let w = Write {
            collection: "Todo".into(),
            id: "a".into(),
            partition: "user:ann".into(),
            version: 7,
            data: Some(obj([("done", true.into())])),
        };
        let server = vec![
            ServerFrame::Welcome {
                schema_version: "abc".into(),
                schema_source: "collection A {}".into(),
                position: 9,
                applied_seq: 2,
                partitions: vec!["user:ann".into()],
            },
            ServerFrame::Snapshot {
                partition: "user:ann".into(),
                position: 9,
                docs: vec![SnapshotDoc {
                    collection: "Todo".into(),
                    id: "a".into(),
                    version: 7,
                    data: obj([("x", Value::Int(1))]),
                }],
            },
            ServerFrame::SnapshotPart {
                partition: "user:ann".into(),
                position: 9,
                docs: vec![SnapshotDoc {
                    collection: "Todo".into(),
                    id: "b".into(),
                    version: 8,
                    data: obj([("x", Value::Int(2))]),
                }],
            },
            ServerFrame::Drop {
                partition: "team:t".into(),
                position: 10,
            },
            ServerFrame::Effects {
                position: 11,
                writes: vec![
                    w.clone(),
                    Write {
                        data: None,
                        ..w.clone()
                    },
                ],
            },
            ServerFrame::Outcome {
                seq: 3,
                result: CommitResult::Committed {
                    position: 11,
                    result: Value::Null,
                },
            },
            ServerFrame::Outcome {
                seq: 4,
                result: CommitResult::Rejected {
                    code: "ABORTED".into(),
                    message: "no".into(),
                },
            },
            ServerFrame::Outcome {
                seq: 5,
                result: CommitResult::Duplicate,
            },
            ServerFrame::Outcome {
                seq: 6,
                result: CommitResult::OutOfOrder { expected: 5 },
            },
            ServerFrame::Error {
                code: codes::BAD_FRAME.into(),
                message: "x".into(),
            },
            ServerFrame::Pong { nonce: 1 },
            ServerFrame::Presence {
                partition: "team:t".into(),
                from: "ann".into(),
                data: vec![7; MAX_PRESENCE_BYTES],
            },
        ];
        (client, server)
    }

    #[test]
    fn frames_round_trip() {
        let (client, server) = samples();
        for f in client {
            assert_eq!(ClientFrame::decode(&f.encode()).unwrap(), f);
        }
        for f in server {
            assert_eq!(ServerFrame::decode(&f.encode()).unwrap(), f);
        }
    }

    #[test]
    fn type_checks_read_the_type_byte_as_decode_does() {
        let (client, server) = samples();
        for f in &server {
            let welcome = matches!(f, ServerFrame::Welcome { .. });
            assert_eq!(ServerFrame::is_welcome(&f.encode()), welcome, "{f:?}");
        }
        for f in &client {
            assert!(!ServerFrame::is_welcome(&f.encode()));
        }
        assert!(!ServerFrame::is_welcome(&[]));
        assert!(!ServerFrame::is_welcome(&[PROTOCOL_VERSION]));
        assert!(!ServerFrame::is_welcome(&[PROTOCOL_VERSION + 1, F_WELCOME]));
    }

    #[test]
    fn both_versions_decode_alike_and_only_version_2_batches() {
        let (client, server) = samples();
        for f in &client {
            let v1 = in_version(&f.encode(), 1);
            assert_eq!(ClientFrame::decode(&v1).unwrap(), *f);
        }
        for f in &server {
            let v1 = in_version(&f.encode(), 1);
            assert_eq!(ServerFrame::decode(&v1).unwrap(), *f);
            assert_eq!(ServerFrame::unbatch(&v1).unwrap(), vec![v1.as_slice()]);
        }
        for v in [0, PROTOCOL_VERSION + 1] {
            let f = in_version(&server[0].encode(), v);
            assert_eq!(
                ServerFrame::decode(&f).unwrap_err().code,
                ErrorCode::Corrupt
            );
        }
        // A batch: its frames, in order, each decoding to what was batched.
        let encoded: Vec<Vec<u8>> = server.iter().map(ServerFrame::encode).collect();
        let batch = ServerFrame::batch(encoded.iter().map(Vec::as_slice));
        assert!(ServerFrame::is_batch(&batch) && !ServerFrame::is_batch(&encoded[0]));
        let frames = ServerFrame::unbatch(&batch).unwrap();
        assert_eq!(
            frames,
            encoded.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
        assert_eq!(ServerFrame::decode_message(&batch).unwrap(), server);
        // Not a frame itself.
        assert!(ServerFrame::decode(&batch).is_err());
        // Refused: cut anywhere, a byte too many, version 1, empty, a batch or a frame
        // of another version inside, a count the bytes cannot hold.
        for cut in 2..batch.len() {
            assert!(ServerFrame::unbatch(&batch[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = batch.clone();
        longer.push(0);
        assert!(ServerFrame::unbatch(&longer).is_err());
        assert!(ServerFrame::unbatch(&in_version(&batch, 1)).is_err());
        assert!(ServerFrame::unbatch(&[PROTOCOL_VERSION, F_BATCH, 0]).is_err());
        let nested = ServerFrame::batch([batch.as_slice()].into_iter());
        assert!(ServerFrame::unbatch(&nested).is_err());
        let v1 = in_version(&encoded[0], 1);
        let mixed = ServerFrame::batch([encoded[1].as_slice(), v1.as_slice()].into_iter());
        assert!(ServerFrame::unbatch(&mixed).is_err());
        let mut huge = vec![PROTOCOL_VERSION, F_BATCH];
        write_varint(&mut huge, u64::MAX);
        assert!(ServerFrame::unbatch(&huge).is_err());
        // docs/PROTOCOL.md's example.
        let pong = ServerFrame::Pong { nonce: 7 }.encode();
        let outcome = ServerFrame::Outcome {
            seq: 3,
            result: CommitResult::Duplicate,
        }
        .encode();
        let example = ServerFrame::batch([pong.as_slice(), outcome.as_slice()].into_iter());
        assert_eq!(
            crate::hex(&example),
            "028a020302870704028503 02".replace(' ', "")
        );
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let (client, server) = samples();
        let bytes: Vec<Vec<u8>> = client
            .iter()
            .map(ClientFrame::encode)
            .chain(server.iter().map(ServerFrame::encode))
            .collect();
        for b in bytes {
            for cut in 0..b.len() {
                assert!(
                    ClientFrame::decode(&b[..cut]).is_err()
                        && ServerFrame::decode(&b[..cut]).is_err()
                );
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(ClientFrame::decode(&longer).is_err() && ServerFrame::decode(&longer).is_err());
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut b = ClientFrame::Ping { nonce: 1 }.encode();
        b[0] = 9;
        let e = ClientFrame::decode(&b).unwrap_err();
        assert!(e.message.contains("protocol version 9"), "{e}");
        assert_eq!(frame_version(&b), Some(9));
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut b = vec![PROTOCOL_VERSION, F_PUSH];
        write_varint(&mut b, u64::MAX >> 1);
        assert_eq!(
            ClientFrame::decode(&b).unwrap_err().code,
            ErrorCode::Corrupt
        );
    }

    #[test]
    fn log_entries_round_trip() {
        let c = Commit {
            client_id: "c".into(),
            client_seq: 12,
            schema_version: "v".into(),
            timestamp: 1_700_000_000_123,
            auth: obj([("sub", "ann".into())]),
            op: Op::Run {
                source: "Todo.all()".into(),
            },
        };
        let b = encode_log_entry(&c);
        assert_eq!(decode_log_entry(&b).unwrap(), c);
        assert_eq!(LogEntry::decode(&b).unwrap(), LogEntry::Commit(c.clone()));
        assert_eq!(LogEntry::Commit(c).encode(), b);
        for cut in 0..b.len() {
            assert!(decode_log_entry(&b[..cut]).is_err());
        }
        let s = LogEntry::Schema(SchemaChange {
            source: "collection A {}".into(),
        });
        let b = s.encode();
        assert_eq!(b[0], 0x02);
        assert_eq!(LogEntry::decode(&b).unwrap(), s);
        assert!(
            decode_log_entry(&b).is_err(),
            "an outbox holds only commits"
        );
        for cut in 0..b.len() {
            assert!(LogEntry::decode(&b[..cut]).is_err());
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(LogEntry::decode(&longer).is_err());
    }

    #[test]
    fn presence_is_bounded() {
        let big = ClientFrame::Presence {
            partition: "p".into(),
            data: vec![0; MAX_PRESENCE_BYTES + 1],
        }
        .encode();
        assert_eq!(
            ClientFrame::decode(&big).unwrap_err().code,
            ErrorCode::Corrupt
        );
        // A length past the frame's end.
        let mut short = ClientFrame::Presence {
            partition: "p".into(),
            data: vec![1, 2, 3],
        }
        .encode();
        short.truncate(short.len() - 1);
        assert!(ClientFrame::decode(&short).is_err());
    }

    #[test]
    fn presence_example_bytes() {
        let c = ClientFrame::Presence {
            partition: "team:t".into(),
            data: b"hi".to_vec(),
        };
        // The bytes docs/PROTOCOL.md shows (version 1), and this build's (version 2).
        assert_eq!(
            crate::hex(&in_version(&c.encode(), 1)),
            "0104067465616d3a74026869"
        );
        assert_eq!(crate::hex(&c.encode()), "0204067465616d3a74026869");
        let s = ServerFrame::Presence {
            partition: "team:t".into(),
            from: "ann".into(),
            data: b"hi".to_vec(),
        };
        assert_eq!(
            crate::hex(&in_version(&s.encode(), 1)),
            "0189067465616d3a7403616e6e026869"
        );
        assert_eq!(crate::hex(&s.encode()), "0289067465616d3a7403616e6e026869");
    }
}
