//! A worker's flat float buffers (its parameters and its gradient): owned by the runner, or
//! shared with a training loop outside peloton whose model tensors are views of them (a PyTorch
//! loop driving peloton from Python, see [`crate::external`]). With shared buffers the
//! algorithms mix the very memory the loop's model computes with: no copy per step.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A fixed-size float buffer that the runner and a loop outside peloton both reach. It never
/// grows or moves, so a view taken of it (a NumPy array, a torch tensor) stays valid for as long
/// as the `Arc` lives.
pub struct SharedBuffer {
    cells: Box<[UnsafeCell<f32>]>,
}

// SAFETY: the buffer is only an address range of f32s. Its two users take turns, never touching
// it at the same time: the runner (through its one [`Flat::Shared`]) and the outside loop, which
// reads and writes it only while the runner waits inside a learner call for that loop's answer
// (the handoff in `external.rs` orders the two sides through a mutex, as a scoped thread borrows
// its parent's data). A loop that breaks that rule races on floats; it cannot free or move them.
unsafe impl Sync for SharedBuffer {}

impl SharedBuffer {
    /// A buffer of `len` zeros.
    pub fn zeros(len: usize) -> Arc<Self> {
        Arc::new(Self {
            cells: (0..len).map(|_| UnsafeCell::new(0.0)).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The first float's address (what a view of the buffer points at).
    pub fn as_ptr(&self) -> *mut f32 {
        UnsafeCell::raw_get(self.cells.as_ptr())
    }

    /// Copies `values` into the buffer. For the outside loop's side, during its turn.
    ///
    /// # Panics
    /// When `values` has another length.
    pub fn write(&self, values: &[f32]) {
        assert_eq!(values.len(), self.len(), "shared buffer length");
        // SAFETY: the caller holds the turn (see the `Sync` impl): nobody else touches the
        // buffer now; the ranges cannot overlap (`values` is a shared borrow of other memory or
        // of this buffer read by the same turn-holder, and `copy` allows overlap anyway).
        unsafe { std::ptr::copy(values.as_ptr(), self.as_ptr(), values.len()) }
    }

    /// The values as a vector of their own. For the outside loop's side, during its turn.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        self.read(&mut out);
        out
    }

    /// Copies the buffer into `out`. For the outside loop's side, during its turn.
    pub fn read(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.len(), "shared buffer length");
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy(self.as_ptr(), out.as_mut_ptr(), out.len()) }
    }
}

/// A worker's parameter or gradient buffer as the runner holds it.
pub enum Flat {
    /// The runner's own vector (every learner built in Rust).
    Owned(Vec<f32>),
    /// Memory shared with a loop outside peloton ([`SharedBuffer`]).
    Shared(Arc<SharedBuffer>),
}

impl Flat {
    pub fn zeros(len: usize) -> Self {
        Flat::Owned(vec![0.0; len])
    }

    /// The values as a vector of their own (a copy of a shared buffer).
    pub fn into_vec(self) -> Vec<f32> {
        match self {
            Flat::Owned(v) => v,
            Flat::Shared(s) => s.to_vec(),
        }
    }
}

impl Deref for Flat {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Flat::Owned(v) => v,
            // SAFETY: the address and length are the live buffer's (the `Arc` keeps it); the
            // runner holds its turn whenever it runs (see `SharedBuffer`'s `Sync` impl).
            Flat::Shared(s) => unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) },
        }
    }
}

impl DerefMut for Flat {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            Flat::Owned(v) => v,
            // SAFETY: as in `deref`; this `Flat` is the runner's only handle on the buffer, and
            // `&mut self` makes the returned slice the only Rust reference to it.
            Flat::Shared(s) => unsafe { std::slice::from_raw_parts_mut(s.as_ptr(), s.len()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_flat_is_the_buffer_itself() {
        let buffer = SharedBuffer::zeros(4);
        let mut flat = Flat::Shared(Arc::clone(&buffer));
        flat[2] = 7.0;
        assert_eq!(flat.as_ptr(), buffer.as_ptr());
        let mut seen = [0.0; 4];
        buffer.read(&mut seen);
        assert_eq!(seen, [0.0, 0.0, 7.0, 0.0]);
        buffer.write(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&flat[..], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(flat.into_vec(), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn an_owned_flat_is_its_vector() {
        let mut flat = Flat::zeros(3);
        flat[0] = 1.5;
        assert_eq!(flat.into_vec(), vec![1.5, 0.0, 0.0]);
    }
}
