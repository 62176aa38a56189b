//! Compressing and encrypting new data chunks.
//!
//! Blob saver threads take chunks that no one has stored yet, seal them (zstd, then the
//! encryption envelope, then the self-check) and pass them to the pack saver. This is the most
//! expensive stage per byte, so it has a thread per core of its own. Each blob is sealed into a
//! buffer the packer gave back, and each chunk's buffer goes back to the file workers. Small
//! chunks (whole small files, mostly) are sealed by the file worker that read them with
//! [`seal_and_send`]: handing them over would cost more than sealing them.

use crate::id::{BlobType, Id};

use super::{NewChunk, Shared};

/// Chunks up to this size are sealed by the file worker itself. Many small files keep every
/// file worker busy anyway, and a hand-over (a copy, a queue, a thread wake-up) costs about
/// as much as sealing a few KiB.
pub const SEAL_INLINE_UP_TO: usize = 64 * 1024;

/// Runs until the chunk channel closes.
pub fn run(shared: &Shared, chunks: crossbeam_channel::Receiver<NewChunk>) {
    for chunk in chunks.iter() {
        if shared.aborted() {
            continue;
        }
        seal_and_send(shared, chunk.id, &chunk.data);
        shared.chunk_buffers.give(chunk.data);
    }
}

/// Seals one data chunk with this thread's codec and queues it for the packer. Returns false
/// (after recording why) when the snapshot has to stop.
pub fn seal_and_send(shared: &Shared, id: Id, data: &[u8]) -> bool {
    let out = shared.saver.buffer();
    let sealed = super::with_codec(|c| {
        c.seal_into(&shared.key, id, data, shared.compress, shared.check, out)
    });
    match sealed {
        Ok(s) => {
            if shared.saver.send(BlobType::Data, s).is_err() {
                shared.fail("the pack saver stopped".into());
                return false;
            }
            true
        }
        Err(e) => {
            shared.fail(e.to_string());
            false
        }
    }
}
