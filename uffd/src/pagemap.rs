//! PAGEMAP_SCAN (Linux 6.7, `include/uapi/linux/fs.h`) and write tracking built on it.
//!
//! A [`WriteTracker`] registers a range with a uffd in `UFFDIO_REGISTER_MODE_WP` with
//! `UFFD_FEATURE_WP_ASYNC` (and `WP_UNPOPULATED` where available, so never-touched anonymous
//! pages are tracked too), then write-protects it. From then on the kernel clears a page's
//! protection on its first write, with no fault delivered to user space; each
//! [`WriteTracker::collect`] is one PAGEMAP_SCAN walk with `PM_SCAN_WP_MATCHING |
//! PM_SCAN_CHECK_WPASYNC` over pages in category `PAGE_IS_WRITTEN`, which returns the written
//! pages and protects them again in the same walk, so no write between two scans is lost.
//!
//! The walk_end quirk (shared/KERNEL.md): with an output vector longer than 512 entries and
//! more than 512 results, the kernel returned a `walk_end` below `end` although it reported the
//! whole range, and resuming from it reported regions twice. We keep the vector at
//! [`SCAN_VEC_LEN`] = 512 entries and treat a vector that came back not full as the end of the
//! walk; only a full vector resumes from `walk_end`.

use crate::{sys, Mapping, RegisterMode, Uffd, UffdError};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// Entries in the PAGEMAP_SCAN output vector (see the walk_end quirk in the module docs).
pub const SCAN_VEC_LEN: usize = 512;

/// Runs PAGEMAP_SCAN on `pagemap` (a `/proc/PID/pagemap` file) over `range`, calling `found`
/// with each reported address range (page-aligned, ascending, regions never repeated).
/// `flags` are `PM_SCAN_*`; pages are those with every category in `mask` (and, if
/// `anyof` is non-zero, one of `anyof`).
pub fn scan(
    pagemap: BorrowedFd<'_>,
    range: Range<u64>,
    flags: u64,
    mask: u64,
    anyof: u64,
    vec: &mut Vec<sys::page_region>,
    mut found: impl FnMut(Range<u64>, u64),
) -> Result<(), UffdError> {
    vec.resize(SCAN_VEC_LEN, sys::page_region::default());
    let mut start = range.start;
    while start < range.end {
        let mut arg = sys::pm_scan_arg {
            size: std::mem::size_of::<sys::pm_scan_arg>() as u64,
            flags,
            start,
            end: range.end,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: mask | anyof,
        };
        // SAFETY: PAGEMAP_SCAN reads and writes one `pm_scan_arg` and writes at most `vec_len`
        // `page_region`s at `vec`, which points at that many initialised entries we own. With
        // WP_MATCHING it changes page protection bits in the target address space, never
        // contents.
        let r = unsafe { libc::ioctl(pagemap.as_raw_fd(), sys::PAGEMAP_SCAN as _, &mut arg) };
        if r < 0 {
            return Err(UffdError::Ioctl {
                op: "PAGEMAP_SCAN",
                source: io::Error::last_os_error(),
            });
        }
        let n = r as usize;
        for p in &vec[..n.min(vec.len())] {
            found(p.start..p.end, p.categories);
        }
        if n < vec.len() || arg.walk_end <= start {
            break; // not full: the walk reached the end (see the quirk above)
        }
        start = arg.walk_end;
    }
    Ok(())
}

/// Whether PAGEMAP_SCAN works on `/proc/self/pagemap` (a one-page scan of a fresh mapping).
pub fn probe_pagemap_scan() -> bool {
    let Ok(f) = File::open("/proc/self/pagemap") else {
        return false;
    };
    let Ok(m) = Mapping::anonymous(crate::page_size()) else {
        return false;
    };
    let mut vec = Vec::new();
    scan(
        f.as_fd(),
        m.addr()..m.addr() + m.len() as u64,
        0,
        sys::PAGE_IS_PRESENT,
        0,
        &mut vec,
        |_, _| {},
    )
    .is_ok()
}

/// Exact write tracking of one address range through WP_ASYNC and PAGEMAP_SCAN.
///
/// The range may belong to another process: then `uffd` is that process's uffd (received over
/// a Unix socket) and `pagemap` its `/proc/PID/pagemap`, opened by it and passed along, or
/// opened here with ptrace permission.
pub struct WriteTracker {
    uffd: Arc<Uffd>,
    pagemap: OwnedFd,
    start: u64,
    len: u64,
    vec: Vec<sys::page_region>,
}

impl WriteTracker {
    /// Features a tracking uffd asks for: WP_ASYNC (required), WP_UNPOPULATED and
    /// WP_HUGETLBFS_SHMEM where the kernel has them.
    pub fn wanted_features(available: crate::Features) -> crate::Features {
        use crate::Features as F;
        F::WP_ASYNC | (available & (F::WP_UNPOPULATED | F::WP_HUGETLBFS_SHMEM))
    }

    /// A uffd of this process ready for tracking (probes the kernel and fails with a message
    /// naming Linux 6.7 and `--detector hash` when WP_ASYNC or PAGEMAP_SCAN is missing).
    pub fn open_uffd() -> Result<Uffd, UffdError> {
        let probe = crate::Probe::run();
        probe.require_write_tracking()?;
        Uffd::new(
            crate::OpenFlags::default(),
            Self::wanted_features(probe.features),
        )
    }

    /// Registers `start..start+len` (page-aligned) with `uffd` for asynchronous write
    /// protection and protects it: writes from now on are tracked. `pagemap` must describe the
    /// address space `uffd` belongs to.
    pub fn start(
        uffd: Arc<Uffd>,
        pagemap: OwnedFd,
        start: u64,
        len: u64,
    ) -> Result<WriteTracker, UffdError> {
        if !uffd.features().contains(crate::Features::WP_ASYNC) {
            return Err(UffdError::Unsupported {
                what: "userfaultfd WP_ASYNC",
                purpose: "uffd write tracking",
                needed: crate::WRITE_TRACKING_KERNEL,
                running: crate::kernel_release(),
                hint: "use --detector hash instead",
            });
        }
        uffd.register(start, len, RegisterMode::WP)?;
        uffd.writeprotect(start, len, true, false)?;
        Ok(WriteTracker {
            uffd,
            pagemap,
            start,
            len,
            vec: Vec::with_capacity(SCAN_VEC_LEN),
        })
    }

    /// Tracking of a range of this process, through `/proc/self/pagemap`.
    pub fn start_self(uffd: Arc<Uffd>, start: u64, len: u64) -> Result<WriteTracker, UffdError> {
        let pagemap = File::open("/proc/self/pagemap")?;
        Self::start(uffd, pagemap.into(), start, len)
    }

    /// The tracked range.
    pub fn range(&self) -> Range<u64> {
        self.start..self.start + self.len
    }

    /// Calls `written` with every range of pages (offsets from the tracked range's start)
    /// written since tracking started or the last `collect`, and protects them again, in one
    /// walk. A write racing the walk is either reported now or by the next call.
    pub fn collect(&mut self, mut written: impl FnMut(Range<u64>)) -> Result<(), UffdError> {
        let base = self.start;
        scan(
            self.pagemap.as_fd(),
            self.range(),
            sys::PM_SCAN_WP_MATCHING | sys::PM_SCAN_CHECK_WPASYNC,
            sys::PAGE_IS_WRITTEN,
            0,
            &mut self.vec,
            |r, _| written(r.start - base..r.end - base),
        )
    }

    /// The uffd the range is registered with.
    pub fn uffd(&self) -> &Arc<Uffd> {
        &self.uffd
    }
}
