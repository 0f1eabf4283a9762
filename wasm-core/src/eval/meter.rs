//! Memory as a budget: what a program holds is paid for before it is allocated.
//!
//! Every evaluation has a [`Meter`] with a limit in bytes ([`super::Limits::max_memory_bytes`];
//! each rule evaluation has one of its own). Before the evaluator builds or copies a
//! value that it will hold (a string, an array, a document it read, the keys of a sort),
//! it pays the value's [`cost`] into the meter, which refuses with `MEMORY_EXHAUSTED`
//! when the limit would be passed. The payment is a [`Paid`] kept with the value, and
//! returned when the value is dropped, so the meter counts what is held at each moment,
//! not what was ever built: a scan over a million documents holds one page at a time.
//!
//! The cost is a model, the same on every build ([`Value::mem_cost`]): a value slot is
//! 32 bytes (a `Value` on a 64-bit target; the browser's wasm uses less), strings and
//! bytes add their length, arrays their items, objects a tree node and about twice an
//! entry's size per entry.
//! It is at least what a 64-bit replica allocates for the value, apart from the spare
//! capacity of growing vectors (at most as much again): so a replica's real peak is at
//! most about twice the limit. Values read and dropped, and the values of a rule
//! evaluation, never count against the program's meter; docs/DECISIONS.md ("Memory")
//! states the bound.
//!
//! Drops happen at the same points in the program on every build (Rust's drop order
//! is part of the code), so what the meter reads, and whether it refuses, is
//! deterministic.

use std::cell::Cell;
use std::rc::Rc;

use crate::error::{Error, ErrorCode};
use crate::value::Value;

pub(crate) use crate::value::MEM_SLOT as SLOT;
use crate::value::{MEM_ENTRY, MEM_OBJECT};

/// The bytes a held value is charged for ([`Value::mem_cost`]).
pub(crate) fn cost(v: &Value) -> u64 {
    v.mem_cost()
}

/// The cost of a string of `len` bytes.
pub(crate) fn string_cost(len: u64) -> u64 {
    SLOT + len
}

/// What adding an entry with key `key` to an object adds beyond the cost of the value
/// itself (its slot is inside the entry), and the object's first node when it was empty.
pub(crate) fn entry_extra(key: &str, first: bool) -> u64 {
    (MEM_ENTRY - SLOT) + key.len() as u64 + if first { MEM_OBJECT } else { 0 }
}

/// Bytes held, against a limit.
#[derive(Debug)]
pub(crate) struct Meter {
    used: Cell<u64>,
    peak: Cell<u64>,
    limit: u64,
    /// Whose budget this is, for the error message.
    whose: &'static str,
}

impl Meter {
    pub fn new(limit: u64, whose: &'static str) -> Rc<Meter> {
        Rc::new(Meter {
            used: Cell::new(0),
            peak: Cell::new(0),
            limit,
            whose,
        })
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.get()
    }

    /// Bytes that may still be paid.
    pub fn left(&self) -> u64 {
        self.limit.saturating_sub(self.used.get())
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn take(&self, bytes: u64) -> Result<(), Error> {
        let used = self.used.get().saturating_add(bytes);
        if used > self.limit {
            return Err(Error::new(
                ErrorCode::MemoryExhausted,
                format!(
                    "{} would hold more than its memory budget of {} bytes",
                    self.whose, self.limit
                ),
            ));
        }
        self.used.set(used);
        self.peak.set(self.peak.get().max(used));
        Ok(())
    }

    fn give_back(&self, bytes: u64) {
        let used = self.used.get();
        // Every payment is given back once, so this cannot go below zero.
        debug_assert!(used >= bytes, "a meter gave back more than it took");
        self.used.set(used.saturating_sub(bytes));
    }

    /// Pays for `bytes` about to be allocated; the [`Paid`] gives them back when it
    /// is dropped.
    pub fn pay(self: &Rc<Self>, bytes: u64) -> Result<Paid, Error> {
        self.take(bytes)?;
        Ok(Paid {
            bytes,
            meter: self.clone(),
        })
    }

    /// Pays for `bytes` for good: for what the evaluation keeps until it ends (the
    /// writes of a transaction).
    pub fn spend(&self, bytes: u64) -> Result<(), Error> {
        self.take(bytes)
    }
}

/// Bytes paid into a meter, given back on drop.
#[derive(Debug)]
pub(crate) struct Paid {
    bytes: u64,
    meter: Rc<Meter>,
}

impl Paid {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pays `more` bytes into the same meter.
    pub fn more(&mut self, more: u64) -> Result<(), Error> {
        self.meter.take(more)?;
        self.bytes += more;
        Ok(())
    }

    /// Settles at `bytes`: gives back what was paid above it (an estimate that was
    /// larger than the value built), or pays the difference.
    pub fn settle(&mut self, bytes: u64) -> Result<(), Error> {
        if bytes >= self.bytes {
            self.more(bytes - self.bytes)
        } else {
            self.meter.give_back(self.bytes - bytes);
            self.bytes = bytes;
            Ok(())
        }
    }

    /// Takes over another payment into the same meter (a value moved into a container
    /// that is being paid for). From another meter, the bytes are paid anew here.
    pub fn absorb(&mut self, other: Paid) -> Result<(), Error> {
        if Rc::ptr_eq(&self.meter, &other.meter) {
            self.bytes += other.bytes;
            // `other` no longer gives its bytes back: they are ours now.
            let mut other = other;
            other.bytes = 0;
            Ok(())
        } else {
            let n = other.bytes;
            drop(other);
            self.more(n)
        }
    }
}

impl Drop for Paid {
    fn drop(&mut self) {
        self.meter.give_back(self.bytes);
    }
}

/// A string, bytes, array or object a program holds: shared (a copy of a variable is a
/// reference, not a copy of the value) and paid for.
#[derive(Debug)]
pub struct Held {
    value: Value,
    paid: Paid,
    /// The canonical encoding's length, computed once when first asked (fuel for
    /// built-ins is charged by it).
    encoded: Cell<Option<u64>>,
}

/// Data a program holds: a scalar inline, anything larger shared and paid for.
#[derive(Clone, Debug)]
pub enum Data {
    /// Null, booleans and numbers: nothing on the heap, nothing to pay.
    Scalar(Value),
    Heap(Rc<Held>),
}

impl Data {
    pub const NULL: Data = Data::Scalar(Value::Null);

    /// Wraps `value`, for which `paid` was paid ([`cost`] of it, or more).
    pub(crate) fn held(value: Value, paid: Paid) -> Data {
        match value {
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => Data::Scalar(value),
            _ => Data::Heap(Rc::new(Held {
                value,
                paid,
                encoded: Cell::new(None),
            })),
        }
    }

    pub fn value(&self) -> &Value {
        match self {
            Data::Scalar(v) => v,
            Data::Heap(h) => &h.value,
        }
    }

    /// The bytes this value was paid for (0 for a scalar).
    pub(crate) fn cost(&self) -> u64 {
        match self {
            Data::Scalar(_) => 0,
            Data::Heap(h) => h.paid.bytes(),
        }
    }

    /// Wraps `value` as [`Data::held`] does, with the length of its canonical encoding
    /// already known (measured as it was built), so that nothing walks it again.
    pub(crate) fn held_sized(value: Value, paid: Paid, encoded: u64) -> Data {
        debug_assert_eq!(value.encoded_len() as u64, encoded);
        let d = Data::held(value, paid);
        if let Data::Heap(h) = &d {
            h.encoded.set(Some(encoded));
        }
        d
    }

    /// The length of the value's canonical encoding when it is known without a walk
    /// (a scalar's, or one remembered).
    pub(crate) fn known_encoded_len(&self) -> Option<u64> {
        match self {
            Data::Scalar(v) => Some(v.encoded_len() as u64),
            Data::Heap(h) => h.encoded.get(),
        }
    }

    /// The length of the value's canonical encoding (remembered).
    pub(crate) fn encoded_len(&self) -> u64 {
        match self {
            Data::Scalar(v) => v.encoded_len() as u64,
            Data::Heap(h) => match h.encoded.get() {
                Some(n) => n,
                None => {
                    let n = h.value.encoded_len() as u64;
                    h.encoded.set(Some(n));
                    n
                }
            },
        }
    }

    /// The value and its payment, moved out when this is the only reference. `Err`
    /// gives the shared value back.
    pub(crate) fn try_take(self) -> Result<(Value, Option<Paid>), Data> {
        match self {
            Data::Scalar(v) => Ok((v, None)),
            Data::Heap(h) => match Rc::try_unwrap(h) {
                Ok(h) => Ok((h.value, Some(h.paid))),
                Err(h) => Err(Data::Heap(h)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::obj;

    #[test]
    fn payments_come_back_when_values_drop() {
        let m = Meter::new(1000, "the test");
        let a = m.pay(600).unwrap();
        assert_eq!(m.pay(500).unwrap_err().code, ErrorCode::MemoryExhausted);
        let mut b = m.pay(300).unwrap();
        drop(a);
        b.more(600).unwrap();
        b.settle(100).unwrap();
        let c = m.pay(900).unwrap();
        assert_eq!(m.peak(), 1000);
        let mut d = m.pay(0).unwrap();
        d.absorb(c).unwrap();
        assert_eq!(d.bytes(), 900);
        drop(b);
        drop(d);
        assert_eq!(m.used.get(), 0);
    }

    #[test]
    fn a_value_costs_at_least_what_it_holds() {
        assert_eq!(cost(&Value::Int(1)), SLOT);
        assert_eq!(cost(&Value::from("abc")), SLOT + 3);
        assert_eq!(
            cost(&Value::Array(vec![Value::Null, Value::from("ab")])),
            SLOT + SLOT + SLOT + 2
        );
        let o = obj([("k", Value::from("v"))]);
        assert_eq!(
            cost(&o),
            SLOT + entry_extra("k", true) + cost(&Value::from("v"))
        );
        // Decoding spends exactly the cost, before it allocates.
        let v = obj([
            ("a", Value::Array(vec![o.clone(), Value::Bytes(vec![1, 2])])),
            ("b", obj([])),
        ]);
        let bytes = v.encode();
        let mut r = crate::value::Reader::new(&bytes);
        assert_eq!(r.value_paid().unwrap(), v);
        assert_eq!(r.spent(), cost(&v));
        let mut r = crate::value::Reader::with_budget(&bytes, cost(&v) - 1);
        assert_eq!(r.value_paid().unwrap_err().code, ErrorCode::MemoryExhausted);
        // A 64-bit Value is the slot the model charges for.
        assert!(std::mem::size_of::<Value>() as u64 <= SLOT);
    }
}
