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

    /// Reserves disk space for the first `len` bytes without changing the file's size
    /// (`fallocate` with `FALLOC_FL_KEEP_SIZE`), so a full disk shows when a segment is
    /// started rather than at the first commit. Prometheus segments have no header that
    /// could be written instead, and the file must keep its real length (readers treat
    /// its end as the end of the log). Where the file system cannot reserve, nothing is
    /// checked.
    pub(crate) fn reserve(&self, len: u64) -> io::Result<()> {
        match self {
            SegFile::Real(f) => reserve(f, len),
            #[cfg(test)]
            SegFile::Faulty(f) => f.reserve(len),
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

fn reserve(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
    // SAFETY: `fallocate` on a file descriptor owned by `f`, which outlives the call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(()),
        _ => Err(e),
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
        /// Consumed one per write call (a new segment's space reservation included);
        /// `None` = succeed.
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

        /// Fails as a write of `len` bytes would (one fault consumed), writing nothing.
        pub fn reserve(&self, len: u64) -> io::Result<()> {
            let fault = {
                let mut p = lock(&self.plan);
                p.writes += 1;
                if p.full {
                    Some(Fault::Enospc(0))
                } else {
                    p.next.pop_front().flatten()
                }
            };
            match fault {
                None => super::reserve(&self.file, len),
                Some(Fault::Enospc(_)) | Some(Fault::Short(_)) => Err(libc_enospc()),
                Some(Fault::Eio(_)) => Err(io::Error::from_raw_os_error(5)),
            }
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
