//! A backup cut into the chunks of the `Admin.Backup` stream.

use std::sync::Arc;

use tonic::Status;

use crate::base::proto::v1 as pb;

/// Bytes per backup chunk.
pub(super) const BACKUP_CHUNK: usize = 256 * 1024;

/// Cuts a backup into chunks for the stream; a write fails once the
/// reader has gone, which ends the backup.
pub(super) struct ChunkWriter {
    pub(super) tx: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
    pub(super) buf: Vec<u8>,
    pub(super) position: Arc<std::sync::atomic::AtomicU64>,
    pub(super) head: u64,
}

impl ChunkWriter {
    pub(super) fn send(&mut self) -> std::io::Result<()> {
        let chunk = pb::BackupChunk {
            data: std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK)),
            position: self.position.load(std::sync::atomic::Ordering::Relaxed),
            head: self.head,
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader has gone"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= BACKUP_CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
