//! The outgoing frame queue of one connection, bounded in frames and in bytes.
//!
//! The region thread (and the gateway, for `Pong`) put encoded frames in; the
//! connection's writer task takes them out and writes them to the socket. A client that
//! stops reading fills the queue; the next frame that does not fit **overflows** it:
//! the sender is told (the region then forgets the connection), and the writer stops
//! writing what is queued and ends the connection with `TOO_SLOW`. So a connection
//! holds at most `max_frames` frames and about `max_bytes` bytes of them, whatever the
//! client does.
//!
//! A frame is counted from when it is queued until the writer has written it to the
//! socket. A frame larger than `max_bytes` is still accepted when nothing else is
//! queued, so every connection can make progress.
//!
//! A snapshot is queued as what to read ([`crate::region::LazySnapshot`]), not as its
//! documents: the writer reads it from the state it was taken at a part at a time, each
//! part a frame of about [`part_bytes`], written before the next is read. So memory per
//! connection stays below `max_bytes` plus one part, however large its partitions (and
//! one batch of snapshots read whole, which the writer may hold to send with other
//! frames: `gateway::ws`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

/// An encoded frame.
pub type Frame = Arc<Vec<u8>>;

/// What a queue holds: an encoded frame, or a snapshot to read and send in parts.
pub enum Item {
    Frame(Frame),
    Snapshot(Arc<crate::region::LazySnapshot>),
}

/// What a queued snapshot counts for until its parts are written.
const SNAPSHOT_ITEM_BYTES: usize = 256;

impl Item {
    /// The bytes it counts for in the queue.
    pub fn len(&self) -> usize {
        match self {
            Item::Frame(f) => f.len(),
            Item::Snapshot(_) => SNAPSHOT_ITEM_BYTES,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The size of a snapshot's parts for a queue of `max_bytes`: a quarter of it, between
/// 4 KiB and 1 MiB.
pub fn part_bytes(max_bytes: usize) -> usize {
    (max_bytes / 4).clamp(4 << 10, 1 << 20)
}

struct Shared {
    bytes: AtomicUsize,
    max_bytes: usize,
    overflowed: AtomicBool,
    overflow: Notify,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct FrameTx {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
}

/// The receiving side, owned by the connection's writer.
pub struct FrameRx {
    rx: mpsc::Receiver<Item>,
    shared: Arc<Shared>,
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full (in frames or in bytes), now or earlier: the connection is
    /// too slow and ends with `TOO_SLOW`.
    Overflow,
    /// The connection is gone.
    Closed,
}

/// What [`FrameRx::recv`] found.
pub enum Received {
    Frame(Frame),
    /// A snapshot to read and write in parts; call [`FrameRx::written`] with
    /// [`Item::len`] once it is written.
    Snapshot(Arc<crate::region::LazySnapshot>),
    /// The queue overflowed: write nothing more, end with `TOO_SLOW`.
    Overflowed,
    /// Every sender is gone.
    Closed,
}

/// A queue of at most `max_frames` frames (at least 1) and about `max_bytes` bytes.
pub fn channel(max_frames: usize, max_bytes: usize) -> (FrameTx, FrameRx) {
    let (tx, rx) = mpsc::channel(max_frames.max(1));
    let shared = Arc::new(Shared {
        bytes: AtomicUsize::new(0),
        max_bytes,
        overflowed: AtomicBool::new(false),
        overflow: Notify::new(),
    });
    (
        FrameTx {
            tx,
            shared: shared.clone(),
        },
        FrameRx { rx, shared },
    )
}

impl FrameTx {
    /// Queues a frame without waiting.
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        self.try_send_item(Item::Frame(frame))
    }

    /// Queues a frame or a snapshot without waiting.
    pub fn try_send_item(&self, frame: Item) -> Result<(), SendError> {
        let s = &self.shared;
        if s.overflowed.load(Ordering::Acquire) {
            return Err(SendError::Overflow);
        }
        let len = frame.len();
        let before = s.bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before.saturating_add(len) > s.max_bytes {
            s.bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return Err(SendError::Overflow);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(e) => {
                s.bytes.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.overflow();
                        Err(SendError::Overflow)
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Closed),
                }
            }
        }
    }

    fn overflow(&self) {
        self.shared.overflowed.store(true, Ordering::Release);
        // `notify_one` keeps a permit when the writer is not waiting yet.
        self.shared.overflow.notify_one();
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

impl FrameRx {
    /// The next frame to write. Call [`FrameRx::written`] once it is written.
    pub async fn recv(&mut self) -> Received {
        if self.shared.overflowed.load(Ordering::Acquire) {
            return Received::Overflowed;
        }
        tokio::select! {
            biased;
            _ = self.shared.overflow.notified() => Received::Overflowed,
            f = self.rx.recv() => match f {
                Some(Item::Frame(f)) => Received::Frame(f),
                Some(Item::Snapshot(l)) => Received::Snapshot(l),
                None => Received::Closed,
            },
        }
    }

    /// The next frame if one is queued now (tests).
    pub fn recv_now(&mut self) -> Received {
        if self.shared.overflowed.load(Ordering::Acquire) {
            return Received::Overflowed;
        }
        match self.rx.try_recv() {
            Ok(f) => {
                self.written(f.len());
                match f {
                    Item::Frame(f) => Received::Frame(f),
                    Item::Snapshot(l) => Received::Snapshot(l),
                }
            }
            Err(_) => Received::Closed,
        }
    }

    /// Whether another frame is queued already (the writer then buffers this one and
    /// writes both with one system call).
    pub fn has_more(&self) -> bool {
        !self.rx.is_empty()
    }

    /// A frame of `len` bytes left the queue's accounting (written, or abandoned).
    pub fn written(&self, len: usize) {
        self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Frame {
        Arc::new(vec![0; n])
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_frames() {
        let (tx, mut rx) = channel(3, 100);
        tx.try_send(frame(60)).unwrap();
        // 60 + 60 > 100: overflow, and everything after it is refused too.
        assert_eq!(tx.try_send(frame(60)), Err(SendError::Overflow));
        assert_eq!(tx.try_send(frame(1)), Err(SendError::Overflow));
        assert!(matches!(rx.recv().await, Received::Overflowed));
        assert_eq!(tx.queued_bytes(), 60);

        let (tx, mut rx) = channel(2, 1000);
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(SendError::Overflow));
        assert!(matches!(rx.recv().await, Received::Overflowed));
    }

    #[tokio::test]
    async fn a_large_frame_passes_an_empty_queue() {
        let (tx, mut rx) = channel(4, 100);
        tx.try_send(frame(500)).unwrap();
        match rx.recv().await {
            Received::Frame(f) => {
                assert_eq!(f.len(), 500);
                rx.written(f.len());
            }
            _ => panic!("not the frame"),
        }
        assert_eq!(tx.queued_bytes(), 0);
        tx.try_send(frame(500)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(SendError::Overflow));
    }

    #[tokio::test]
    async fn closed_when_the_senders_are_gone() {
        let (tx, mut rx) = channel(4, 100);
        tx.try_send(frame(5)).unwrap();
        drop(tx);
        assert!(matches!(rx.recv().await, Received::Frame(_)));
        assert!(matches!(rx.recv().await, Received::Closed));
    }
}
