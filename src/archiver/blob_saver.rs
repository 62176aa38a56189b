//! Compressing and encrypting new data chunks.
//!
//! Blob saver threads take chunks that no one has stored yet, seal them (zstd, then the
//! encryption envelope, then the self-check) and pass them to the pack saver. This is the most
//! expensive stage per byte, so it has a thread per core of its own. Each blob is sealed into a
//! buffer the packer gave back, and each chunk's buffer goes back to the file workers.

use crate::id::BlobType;

use super::{NewChunk, Shared};

/// Runs until the chunk channel closes.
pub fn run(shared: &Shared, chunks: crossbeam_channel::Receiver<NewChunk>) {
    for chunk in chunks.iter() {
        if shared.aborted() {
            continue;
        }
        let out = shared.saver.buffer();
        let sealed = super::with_codec(|c| {
            c.seal_into(&shared.key, chunk.id, &chunk.data, shared.compress, out)
        });
        shared.chunk_buffers.give(chunk.data);
        match sealed {
            Ok(s) => {
                if shared.saver.send(BlobType::Data, s).is_err() {
                    shared.fail("the pack saver stopped".into());
                }
            }
            Err(e) => shared.fail(e.to_string()),
        }
    }
}
