//! A small pool of byte buffers handed from one pipeline stage back to the one before it.
//!
//! Every new chunk of a snapshot is copied into its own buffer for the blob savers, sealed into
//! another for the packer, and copied into a pack. Allocating those buffers fresh each time
//! makes the kernel map, zero and later unmap about three pages per byte snapshotted, which
//! cost an eighth of a first snapshot's CPU. A stage that is done with a buffer gives it back
//! here and the stage before takes it again. The pool keeps at most `keep` buffers, none with
//! more than `max_capacity` bytes (larger ones are shrunk, so a rare 8 MiB chunk does not stay
//! resident), and never holds more than the stages had in flight anyway.

use std::sync::Mutex;

/// Buffers waiting for reuse.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    max_capacity: usize,
}

impl BufferPool {
    /// A pool that keeps up to `keep` buffers of at most `max_capacity` bytes each.
    pub fn new(keep: usize, max_capacity: usize) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
            max_capacity,
        }
    }

    /// An empty buffer: one given back earlier when there is one, else a new one.
    pub fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .map(|mut free| free.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Gives `buf` back for reuse; it is dropped instead when the pool is full. A buffer that
    /// grew past the pool's largest kept capacity is shrunk to it first (glibc remaps large
    /// blocks in place, so this copies nothing and returns the tail's pages).
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        if buf.capacity() > self.max_capacity {
            buf.shrink_to(self.max_capacity);
        }
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.keep
        {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_their_capacity() {
        let pool = BufferPool::new(2, 1 << 20);
        let mut a = pool.take();
        assert_eq!(a.capacity(), 0);
        a.extend_from_slice(&[7; 5000]);
        let cap = a.capacity();
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take();
        assert!(b.is_empty());
        assert_eq!(
            (b.capacity(), b.as_ptr()),
            (cap, ptr),
            "the same allocation"
        );
    }

    #[test]
    fn the_pool_keeps_no_more_than_it_may() {
        let pool = BufferPool::new(2, 1 << 20);
        for _ in 0..3 {
            pool.give(Vec::with_capacity(1000));
        }
        let kept: Vec<Vec<u8>> = (0..3).map(|_| pool.take()).collect();
        let caps: Vec<usize> = kept.iter().map(Vec::capacity).collect();
        assert_eq!(caps, [1000, 1000, 0], "two buffers kept, the third dropped");
    }

    #[test]
    fn large_buffers_are_shrunk_to_the_kept_capacity() {
        let pool = BufferPool::new(2, 1 << 20);
        let mut big = vec![1u8; 3 << 20];
        big.truncate(10);
        pool.give(big);
        let back = pool.take();
        assert!(back.is_empty());
        assert_eq!(back.capacity(), 1 << 20);
    }
}
