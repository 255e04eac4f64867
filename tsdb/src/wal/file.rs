//! The file a WAL segment is written through.
//!
//! Production builds have exactly one variant (a real [`File`]), so every call is a
//! direct syscall wrapper. Unit tests add a fault-injecting variant that fails writes
//! with ENOSPC or EIO, or writes only part of a buffer, at chosen writes — the failures a
//! full or failing disk produces — so the writer's recovery can be checked byte for byte.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub(crate) enum SegFile {
    Real(File),
    #[cfg(test)]
    Faulty(faults::FaultyFile),
}

impl SegFile {
    /// Writes all of `buf` at `off` (positional: a failed or short write never moves a
    /// cursor, so the next write goes exactly where the writer thinks the log ends).
    pub(crate) fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        match self {
            SegFile::Real(f) => f.write_all_at(buf, off),
            #[cfg(test)]
            SegFile::Faulty(f) => f.write_all_at(buf, off),
        }
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            SegFile::Real(f) => f.set_len(len),
            #[cfg(test)]
            SegFile::Faulty(f) => f.set_len(len),
        }
    }

    pub(crate) fn sync_data(&self) -> io::Result<()> {
        match self {
            SegFile::Real(f) => f.sync_data(),
            #[cfg(test)]
            SegFile::Faulty(f) => f.file.sync_data(),
        }
    }
}

#[cfg(test)]
pub(crate) mod faults {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// How one write call fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fault {
        /// Writes the first `n` bytes (clamped to the buffer), then fails with ENOSPC.
        Enospc(usize),
        /// Writes the first `n` bytes, then fails with EIO.
        Eio(usize),
        /// Accepts only the first `n` bytes (a short write), then fails the remainder
        /// with ENOSPC, as a file system that runs out of room mid-buffer does.
        Short(usize),
    }

    /// Shared between a test and every segment file of one WAL.
    #[derive(Debug, Default)]
    pub struct Plan {
        /// Consumed one per write call (segment magic included); `None` = succeed.
        pub next: VecDeque<Option<Fault>>,
        /// While set, every write fails with ENOSPC after writing nothing (a full disk).
        pub full: bool,
        /// While set, `set_len` fails with EIO (the torn tail cannot be cut back).
        pub fail_truncate: bool,
        /// Write calls seen.
        pub writes: u64,
    }

    pub type SharedPlan = Arc<Mutex<Plan>>;

    pub struct FaultyFile {
        pub file: File,
        pub plan: SharedPlan,
    }

    fn lock(p: &SharedPlan) -> std::sync::MutexGuard<'_, Plan> {
        p.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl FaultyFile {
        pub fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
            let fault = {
                let mut p = lock(&self.plan);
                p.writes += 1;
                if p.full {
                    Some(Fault::Enospc(0))
                } else {
                    p.next.pop_front().flatten()
                }
            };
            let (n, kind) = match fault {
                None => return self.file.write_all_at(buf, off),
                Some(Fault::Enospc(n)) | Some(Fault::Short(n)) => (n, libc_enospc()),
                Some(Fault::Eio(n)) => (n, io::Error::from_raw_os_error(5)),
            };
            let n = n.min(buf.len().saturating_sub(1));
            self.file.write_all_at(&buf[..n], off)?;
            Err(kind)
        }

        pub fn set_len(&self, len: u64) -> io::Result<()> {
            if lock(&self.plan).fail_truncate {
                return Err(io::Error::from_raw_os_error(5));
            }
            self.file.set_len(len)
        }
    }

    fn libc_enospc() -> io::Error {
        io::Error::from_raw_os_error(28)
    }
}
