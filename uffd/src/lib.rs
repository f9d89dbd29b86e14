//! Linux userfaultfd and PAGEMAP_SCAN, as a thin documented layer: feature probing ([`Probe`]),
//! registration of ranges for MISSING, MINOR and write-protect faults, fault events and their
//! resolution ([`Uffd`]), exact write tracking with `UFFD_FEATURE_WP_ASYNC` plus `PAGEMAP_SCAN`
//! (Linux 6.7, [`pagemap::WriteTracker`]), and the hand-over of a uffd and its memory between
//! processes over a Unix socket ([`handover`]). The ABI lives in [`sys`], transcribed from the
//! kernel's uapi headers with size assertions.
//!
//! It knows nothing of memsync: any program may use it. It is written over `libc`/`rustix`
//! rather than the `userfaultfd` crate, which needs libclang to build and has neither WP_ASYNC
//! nor PAGEMAP_SCAN.

#![warn(missing_docs)]

pub mod handover;
pub mod pagemap;
pub mod sys;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The kernel version that brought what write tracking needs (WP_ASYNC and PAGEMAP_SCAN).
pub const WRITE_TRACKING_KERNEL: &str = "6.7";

/// Errors of this crate's userfaultfd and PAGEMAP_SCAN operations.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// No userfaultfd could be opened.
    #[error("cannot open a userfaultfd: {0}; memsync needs the userfaultfd(2) system call (CONFIG_USERFAULTFD) and, for faults from kernel mode, root or CAP_SYS_PTRACE (or sysctl vm.unprivileged_userfaultfd=1)")]
    Open(io::Error),
    /// An ioctl on a uffd or a pagemap file failed.
    #[error("{op}: {source}")]
    Ioctl {
        /// The ioctl's name.
        op: &'static str,
        /// The error it returned.
        source: io::Error,
    },
    #[error("this kernel (Linux {running}) lacks {what}, which {purpose} needs (Linux {needed} or newer); {hint}")]
    /// The running kernel lacks a feature that an operation needs.
    Unsupported {
        /// The missing feature.
        what: &'static str,
        /// What needs it.
        purpose: &'static str,
        /// The Linux version that brought it.
        needed: &'static str,
        /// The running kernel's release.
        running: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// Any other I/O error.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl UffdError {
    fn ioctl(op: &'static str) -> impl FnOnce(io::Error) -> UffdError {
        move |source| UffdError::Ioctl { op, source }
    }
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// The system page size.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// A set of `UFFD_FEATURE_*` bits.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Features(pub u64);

impl Features {
    /// Write-protect mode (`RegisterMode::WP`) is supported.
    pub const PAGEFAULT_FLAG_WP: Features = Features(sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP);
    /// `fork` of a process with registered ranges gives the child a uffd of its own and delivers
    /// [`Event::Fork`].
    pub const EVENT_FORK: Features = Features(sys::UFFD_FEATURE_EVENT_FORK);
    /// `mremap` of a registered range delivers [`Event::Remap`].
    pub const EVENT_REMAP: Features = Features(sys::UFFD_FEATURE_EVENT_REMAP);
    /// `madvise(MADV_REMOVE/MADV_DONTNEED)` on a registered range delivers [`Event::Remove`].
    pub const EVENT_REMOVE: Features = Features(sys::UFFD_FEATURE_EVENT_REMOVE);
    /// MISSING mode can be registered on hugetlbfs ranges.
    pub const MISSING_HUGETLBFS: Features = Features(sys::UFFD_FEATURE_MISSING_HUGETLBFS);
    /// MISSING mode can be registered on shmem (tmpfs, memfd) ranges.
    pub const MISSING_SHMEM: Features = Features(sys::UFFD_FEATURE_MISSING_SHMEM);
    /// `munmap` of a registered range delivers [`Event::Unmap`].
    pub const EVENT_UNMAP: Features = Features(sys::UFFD_FEATURE_EVENT_UNMAP);
    /// Faults deliver no event but send SIGBUS to the faulting process.
    pub const SIGBUS: Features = Features(sys::UFFD_FEATURE_SIGBUS);
    /// Page-fault events carry the faulting thread's ID.
    pub const THREAD_ID: Features = Features(sys::UFFD_FEATURE_THREAD_ID);
    /// MINOR mode can be registered on hugetlbfs-backed pages.
    pub const MINOR_HUGETLBFS: Features = Features(sys::UFFD_FEATURE_MINOR_HUGETLBFS);
    /// MINOR mode can be registered on shmem-backed pages.
    pub const MINOR_SHMEM: Features = Features(sys::UFFD_FEATURE_MINOR_SHMEM);
    /// Page-fault events report the exact address, offset within the page included.
    pub const EXACT_ADDRESS: Features = Features(sys::UFFD_FEATURE_EXACT_ADDRESS);
    /// Write-protect mode is supported on shmem and hugetlbfs as well.
    pub const WP_HUGETLBFS_SHMEM: Features = Features(sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    /// Write protection also applies to unpopulated anonymous pages (empty PTEs).
    pub const WP_UNPOPULATED: Features = Features(sys::UFFD_FEATURE_WP_UNPOPULATED);
    /// The kernel supports resolving faults with `UFFDIO_POISON`.
    pub const POISON: Features = Features(sys::UFFD_FEATURE_POISON);
    /// Asynchronous write protection: the kernel resolves a write fault itself by removing the
    /// protection, and no event is delivered. Implies WP_UNPOPULATED.
    pub const WP_ASYNC: Features = Features(sys::UFFD_FEATURE_WP_ASYNC);
    /// The kernel supports moving existing pages into a range with `UFFDIO_MOVE`.
    pub const MOVE: Features = Features(sys::UFFD_FEATURE_MOVE);

    const NAMES: [(&'static str, Features); 17] = [
        ("PAGEFAULT_FLAG_WP", Self::PAGEFAULT_FLAG_WP),
        ("EVENT_FORK", Self::EVENT_FORK),
        ("EVENT_REMAP", Self::EVENT_REMAP),
        ("EVENT_REMOVE", Self::EVENT_REMOVE),
        ("MISSING_HUGETLBFS", Self::MISSING_HUGETLBFS),
        ("MISSING_SHMEM", Self::MISSING_SHMEM),
        ("EVENT_UNMAP", Self::EVENT_UNMAP),
        ("SIGBUS", Self::SIGBUS),
        ("THREAD_ID", Self::THREAD_ID),
        ("MINOR_HUGETLBFS", Self::MINOR_HUGETLBFS),
        ("MINOR_SHMEM", Self::MINOR_SHMEM),
        ("EXACT_ADDRESS", Self::EXACT_ADDRESS),
        ("WP_HUGETLBFS_SHMEM", Self::WP_HUGETLBFS_SHMEM),
        ("WP_UNPOPULATED", Self::WP_UNPOPULATED),
        ("POISON", Self::POISON),
        ("WP_ASYNC", Self::WP_ASYNC),
        ("MOVE", Self::MOVE),
    ];

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The feature names, as the kernel header spells them without `UFFD_FEATURE_`.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, f)| self.contains(*f))
            .map(|(n, _)| *n)
            .collect()
    }
}

impl std::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for Features {
    type Output = Features;
    fn bitand(self, rhs: Features) -> Features {
        Features(self.0 & rhs.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names().join("|"))
    }
}

/// What this kernel offers, found by asking it (a throwaway uffd's UFFDIO_API with no features
/// requested returns every feature the kernel knows, and a one-page PAGEMAP_SCAN tells whether
/// that ioctl exists).
#[derive(Clone, Debug)]
pub struct Probe {
    /// `uname -r`.
    pub kernel: String,
    /// Whether a userfaultfd could be opened at all, and if not why.
    pub open_error: Option<String>,
    /// Features the kernel supports.
    pub features: Features,
    /// `1 << _UFFDIO_*` bits of the ioctls available on a uffd.
    pub ioctls: u64,
    /// Whether `PAGEMAP_SCAN` works on `/proc/self/pagemap`.
    pub pagemap_scan: bool,
}

impl Probe {
    /// Asks the running kernel.
    pub fn run() -> Probe {
        let kernel = kernel_release();
        let pagemap_scan = pagemap::probe_pagemap_scan();
        match open_fd(OpenFlags::default()).and_then(|fd| {
            api(fd.as_fd(), Features(0)).map_err(|source| UffdError::Ioctl {
                op: "UFFDIO_API",
                source,
            })
        }) {
            Ok(a) => Probe {
                kernel,
                open_error: None,
                features: Features(a.features),
                ioctls: a.ioctls,
                pagemap_scan,
            },
            Err(e) => Probe {
                kernel,
                open_error: Some(e.to_string()),
                features: Features(0),
                ioctls: 0,
                pagemap_scan,
            },
        }
    }

    /// Fails with a message naming the kernel version needed and the detector to use instead,
    /// unless write tracking (WP_ASYNC + PAGEMAP_SCAN) is available.
    pub fn require_write_tracking(&self) -> Result<(), UffdError> {
        let unsupported = |what| UffdError::Unsupported {
            what,
            purpose: "uffd write tracking",
            needed: WRITE_TRACKING_KERNEL,
            running: self.kernel.clone(),
            hint: "use --detector hash instead",
        };
        if let Some(e) = &self.open_error {
            return Err(UffdError::Open(io::Error::other(e.clone())));
        }
        if !self.features.contains(Features::WP_ASYNC) {
            return Err(unsupported("userfaultfd WP_ASYNC"));
        }
        if !self.pagemap_scan {
            return Err(unsupported("the PAGEMAP_SCAN ioctl"));
        }
        Ok(())
    }

    /// Fails unless MISSING faults can be handled (lazy replicas).
    pub fn require_missing_faults(&self) -> Result<(), UffdError> {
        match &self.open_error {
            Some(e) => Err(UffdError::Open(io::Error::other(e.clone()))),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel: Linux {}", self.kernel)?;
        match &self.open_error {
            Some(e) => writeln!(f, "userfaultfd: unavailable ({e})")?,
            None => writeln!(f, "userfaultfd features: {:?}", self.features)?,
        }
        writeln!(
            f,
            "PAGEMAP_SCAN: {}",
            if self.pagemap_scan {
                "available"
            } else {
                "absent"
            }
        )?;
        let wt = self.require_write_tracking();
        writeln!(
            f,
            "uffd write tracking (--detector uffd): {}",
            match &wt {
                Ok(()) => "available".to_owned(),
                Err(e) => format!("unavailable: {e}"),
            }
        )?;
        write!(
            f,
            "lazy replicas (MISSING faults): {}",
            if self.open_error.is_none() {
                "available"
            } else {
                "unavailable"
            }
        )
    }
}

/// How to open a userfaultfd.
#[derive(Clone, Copy, Debug)]
pub struct OpenFlags {
    /// `UFFD_USER_MODE_ONLY`: needs no privilege, but faults raised by the kernel itself (a
    /// `read(2)` into the range, KVM touching guest memory) fail with EFAULT instead of being
    /// delivered. Irrelevant to WP_ASYNC tracking, where no fault is delivered at all.
    pub user_mode_only: bool,
    /// `O_NONBLOCK`: `read` returns EAGAIN instead of waiting for an event.
    pub nonblocking: bool,
}

impl Default for OpenFlags {
    fn default() -> Self {
        OpenFlags {
            user_mode_only: true,
            nonblocking: true,
        }
    }
}

/// Opens a new userfaultfd (without the UFFDIO_API handshake): the `userfaultfd(2)` system call,
/// or where that is refused (EPERM with `vm.unprivileged_userfaultfd=0`, or a seccomp filter),
/// `/dev/userfaultfd`'s `USERFAULTFD_IOC_NEW`. Always close-on-exec.
pub fn open_fd(flags: OpenFlags) -> Result<OwnedFd, UffdError> {
    use rustix::mm::UserfaultfdFlags;
    let mut f = UserfaultfdFlags::CLOEXEC;
    if flags.nonblocking {
        f |= UserfaultfdFlags::NONBLOCK;
    }
    if flags.user_mode_only {
        // Not named by rustix; the bit is `UFFD_USER_MODE_ONLY` from the uapi header.
        f |= UserfaultfdFlags::from_bits_retain(sys::UFFD_USER_MODE_ONLY as u32);
    }
    // SAFETY: creating the descriptor touches no memory. What it allows afterwards (filling
    // pages of registered ranges) goes through this module's functions, whose own contracts
    // say when that is sound.
    let first = match unsafe { rustix::mm::userfaultfd(f) } {
        Ok(fd) => return Ok(fd),
        Err(e) => io::Error::from(e),
    };
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        Ok(d) => d,
        Err(_) => return Err(UffdError::Open(first)),
    };
    let mut arg = libc::O_CLOEXEC;
    if flags.nonblocking {
        arg |= libc::O_NONBLOCK;
    }
    if flags.user_mode_only {
        arg |= sys::UFFD_USER_MODE_ONLY;
    }
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new descriptor; no
    // memory is passed.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), sys::USERFAULTFD_IOC_NEW as _, arg) };
    if fd < 0 {
        return Err(UffdError::Open(first));
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issues an ioctl whose argument is a pointer to `arg`, returning the ioctl's result.
///
/// # Safety
/// `req` must be an ioctl that reads and/or writes exactly a `T` at its argument pointer (which
/// the size encoded in every number of [`sys`] guarantees for the types used with it), and any
/// other memory it touches must be allowed by the caller's own contract.
unsafe fn ioctl_ptr<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<i32> {
    // SAFETY: see the function's contract; `arg` is a valid, exclusive `T` for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// UFFDIO_API on `fd` asking for `features`; returns what the kernel enabled.
fn api(fd: BorrowedFd<'_>, features: Features) -> io::Result<sys::uffdio_api> {
    let mut a = sys::uffdio_api {
        api: sys::UFFD_API,
        features: features.0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `uffdio_api`.
    unsafe { ioctl_ptr(fd, sys::UFFDIO_API, &mut a) }?;
    Ok(a)
}

/// One event read from a uffd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A fault at `address` (not page-aligned unless EXACT_ADDRESS was not asked for, in which
    /// case the kernel rounds it down). `ptid` is the faulting thread when THREAD_ID is on.
    Pagefault {
        /// The faulting address.
        address: u64,
        /// The access was a write (`UFFD_PAGEFAULT_FLAG_WRITE`).
        write: bool,
        /// A write-protect fault (`UFFD_PAGEFAULT_FLAG_WP`).
        wp: bool,
        /// A minor fault: the page is in the page cache but not mapped
        /// (`UFFD_PAGEFAULT_FLAG_MINOR`).
        minor: bool,
        /// The faulting thread's ID; 0 unless THREAD_ID is enabled.
        ptid: u32,
    },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `start..end` (EVENT_REMOVE).
    Remove {
        /// Start of the dropped range.
        start: u64,
        /// End of the dropped range (exclusive).
        end: u64,
    },
    /// `munmap` of `start..end` (EVENT_UNMAP).
    Unmap {
        /// Start of the unmapped range.
        start: u64,
        /// End of the unmapped range (exclusive).
        end: u64,
    },
    /// `mremap` moved `from` to `to` (EVENT_REMAP).
    Remap {
        /// The old start address.
        from: u64,
        /// The new start address.
        to: u64,
        /// Length in bytes of the range at `from`.
        len: u64,
    },
    /// `fork` created a child whose uffd is `ufd` (EVENT_FORK).
    Fork {
        /// The child's uffd: a descriptor number in the process that read the event.
        ufd: u32,
    },
    /// An event this module does not know.
    Unknown(u8),
}

impl Event {
    /// Decodes a message read from a uffd.
    pub fn from_msg(m: &sys::uffd_msg) -> Event {
        let [a0, a1, a2] = m.arg;
        match m.event {
            sys::UFFD_EVENT_PAGEFAULT => Event::Pagefault {
                address: a1,
                write: a0 & sys::UFFD_PAGEFAULT_FLAG_WRITE != 0,
                wp: a0 & sys::UFFD_PAGEFAULT_FLAG_WP != 0,
                minor: a0 & sys::UFFD_PAGEFAULT_FLAG_MINOR != 0,
                // `feat.ptid` is the first __u32 of the third word (little-endian layout).
                ptid: u32::from_ne_bytes(a2.to_ne_bytes()[..4].try_into().expect("4 bytes")),
            },
            sys::UFFD_EVENT_REMOVE => Event::Remove { start: a0, end: a1 },
            sys::UFFD_EVENT_UNMAP => Event::Unmap { start: a0, end: a1 },
            sys::UFFD_EVENT_REMAP => Event::Remap {
                from: a0,
                to: a1,
                len: a2,
            },
            sys::UFFD_EVENT_FORK => Event::Fork {
                ufd: u32::from_ne_bytes(a0.to_ne_bytes()[..4].try_into().expect("4 bytes")),
            },
            e => Event::Unknown(e),
        }
    }
}

/// Registration modes for [`Uffd::register`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterMode(pub u64);

impl RegisterMode {
    /// `UFFDIO_REGISTER_MODE_MISSING`: faults on pages not yet mapped.
    pub const MISSING: RegisterMode = RegisterMode(sys::UFFDIO_REGISTER_MODE_MISSING);
    /// `UFFDIO_REGISTER_MODE_WP`: write faults on write-protected pages.
    pub const WP: RegisterMode = RegisterMode(sys::UFFDIO_REGISTER_MODE_WP);
    /// `UFFDIO_REGISTER_MODE_MINOR`: faults on pages present in the page cache but not mapped
    /// (shmem, hugetlbfs).
    pub const MINOR: RegisterMode = RegisterMode(sys::UFFDIO_REGISTER_MODE_MINOR);
}

/// A fill ioctl (COPY, ZEROPAGE, CONTINUE) that stopped part-way: `done` bytes from the start
/// were filled, then `source` happened (EEXIST: a page was already present; EAGAIN: the
/// mapping changed under the call, retry; ENOENT/ESRCH: the range or the process is gone).
#[derive(Debug, thiserror::Error)]
#[error("{op} stopped after {done} bytes: {source}")]
pub struct FillError {
    /// The ioctl's name.
    pub op: &'static str,
    /// Bytes filled from the start of the range before it stopped.
    pub done: usize,
    /// The error that stopped it.
    pub source: io::Error,
}

impl FillError {
    /// The errno of `source`, if it carries one.
    pub fn kind_errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A userfaultfd that passed the UFFDIO_API handshake. All operations take `&self`: the kernel
/// serialises them, so one uffd can be shared between a fault-reading thread and fillers.
///
/// The uffd acts on the address space of the process that *created* it, which is not
/// necessarily this one: a uffd received over a Unix socket registers, fills and protects
/// ranges of its creator's memory. Addresses are therefore plain `u64`s.
pub struct Uffd {
    fd: OwnedFd,
    features: Features,
    ioctls: u64,
}

impl fmt::Debug for Uffd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uffd")
            .field("fd", &self.fd.as_raw_fd())
            .field("features", &self.features)
            .finish()
    }
}

impl Uffd {
    /// Opens a uffd and enables `features` (all of which the kernel must support: see
    /// [`Probe`] to find out first).
    pub fn new(flags: OpenFlags, features: Features) -> Result<Uffd, UffdError> {
        Self::from_fd(open_fd(flags)?, features)
    }

    /// Runs the UFFDIO_API handshake on `fd`, a uffd on which nobody ran it yet (a second
    /// UFFDIO_API on one uffd fails with EINVAL).
    pub fn from_fd(fd: OwnedFd, features: Features) -> Result<Uffd, UffdError> {
        let a = api(fd.as_fd(), features).map_err(UffdError::ioctl("UFFDIO_API"))?;
        Ok(Uffd {
            fd,
            features: Features(a.features),
            ioctls: a.ioctls,
        })
    }

    /// Wraps a uffd whose UFFDIO_API handshake someone else already ran (a VMM handing its
    /// uffd to a page-fault handler), with the features it is believed to have.
    pub fn from_configured_fd(fd: OwnedFd, features: Features) -> Uffd {
        Uffd {
            fd,
            features,
            ioctls: !0,
        }
    }

    /// Features enabled on this uffd.
    pub fn features(&self) -> Features {
        self.features
    }

    /// `1 << _UFFDIO_*` bits of the ioctls UFFDIO_API reported.
    pub fn ioctls(&self) -> u64 {
        self.ioctls
    }

    /// UFFDIO_REGISTER of `start..start+len` (page-aligned) in `mode`; returns the ioctls
    /// usable on the range.
    pub fn register(&self, start: u64, len: u64, mode: RegisterMode) -> Result<u64, UffdError> {
        let mut r = sys::uffdio_register {
            range: sys::uffdio_range { start, len },
            mode: mode.0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`. Registering changes
        // no memory contents: faults in the range wait for (or, WP_ASYNC, are resolved by) the
        // kernel, which can block but not corrupt.
        unsafe { ioctl_ptr(self.fd.as_fd(), sys::UFFDIO_REGISTER, &mut r) }
            .map_err(UffdError::ioctl("UFFDIO_REGISTER"))?;
        Ok(r.ioctls)
    }

    /// UFFDIO_UNREGISTER of `start..start+len`; wakes threads waiting on faults there.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = sys::uffdio_range { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads one `uffdio_range`.
        unsafe { ioctl_ptr(self.fd.as_fd(), sys::UFFDIO_UNREGISTER, &mut r) }
            .map_err(UffdError::ioctl("UFFDIO_UNREGISTER"))?;
        Ok(())
    }

    /// UFFDIO_WAKE: wakes threads waiting on faults in `start..start+len` (they retry the
    /// access, faulting again if the page is still missing).
    pub fn wake(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = sys::uffdio_range { start, len };
        // SAFETY: UFFDIO_WAKE reads one `uffdio_range` and changes no memory.
        unsafe { ioctl_ptr(self.fd.as_fd(), sys::UFFDIO_WAKE, &mut r) }
            .map_err(UffdError::ioctl("UFFDIO_WAKE"))?;
        Ok(())
    }

    /// UFFDIO_WRITEPROTECT: protects (`protect`) or unprotects `start..start+len`. With
    /// WP_ASYNC, protecting is how tracking starts. Unprotecting wakes writers waiting on the
    /// range unless `!wake`; `wake` is ignored when protecting (the kernel refuses
    /// `MODE_WP | MODE_DONTWAKE` with EINVAL, as there is nobody to wake).
    pub fn writeprotect(
        &self,
        start: u64,
        len: u64,
        protect: bool,
        wake: bool,
    ) -> Result<(), UffdError> {
        let mut mode = 0;
        if protect {
            mode |= sys::UFFDIO_WRITEPROTECT_MODE_WP;
        }
        if !wake && !protect {
            mode |= sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
        }
        let mut w = sys::uffdio_writeprotect {
            range: sys::uffdio_range { start, len },
            mode,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads one `uffdio_writeprotect`; it changes page
        // protection bits, never contents.
        unsafe { ioctl_ptr(self.fd.as_fd(), sys::UFFDIO_WRITEPROTECT, &mut w) }
            .map_err(UffdError::ioctl("UFFDIO_WRITEPROTECT"))?;
        Ok(())
    }

    /// UFFDIO_COPY: fills the missing pages of `dst..dst+src.len()` with `src` (atomically per
    /// page) and, unless `!wake`, wakes threads waiting there. Stops at the first page already
    /// present (EEXIST), reporting how far it got.
    ///
    /// # Safety
    /// `dst..dst+src.len()` must lie in a range registered with this uffd (in the address space
    /// of the uffd's creator), page-aligned, and no Rust reference in that process may rely on
    /// the pages' contents staying unchanged. Pages already present are never written, so the
    /// usual case (memory whose every read waits for this fill) satisfies this by construction.
    pub unsafe fn copy(&self, dst: u64, src: &[u8], wake: bool) -> Result<(), FillError> {
        let mut done = 0usize;
        while done < src.len() {
            let mut c = sys::uffdio_copy {
                dst: dst + done as u64,
                src: src[done..].as_ptr() as u64,
                len: (src.len() - done) as u64,
                mode: if wake {
                    0
                } else {
                    sys::UFFDIO_COPY_MODE_DONTWAKE
                },
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`, reads `len` bytes at
            // `src` (a live slice) and fills only missing pages at `dst`, which the caller's
            // contract covers.
            let r = unsafe { ioctl_ptr(self.fd.as_fd(), sys::UFFDIO_COPY, &mut c) };
            let n = c.copy.max(0) as usize;
            match r {
                Ok(_) => done += n.max(src.len() - done),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => done += n,
                Err(source) => {
                    return Err(FillError {
                        op: "UFFDIO_COPY",
                        done: done + n,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// UFFDIO_ZEROPAGE: maps the zero page into the missing pages of `dst..dst+len`.
    ///
    /// # Safety
    /// As for [`Uffd::copy`].
    pub unsafe fn zeropage(&self, dst: u64, len: u64, wake: bool) -> Result<(), FillError> {
        let mut done = 0u64;
        while done < len {
            let mut z = sys::uffdio_zeropage {
                range: sys::uffdio_range {
                    start: dst + done,
                    len: len - done,
                },
                mode: if wake {
                    0
                } else {
                    sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE
                },
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE reads and writes one `uffdio_zeropage` and fills only
            // missing pages, which the caller's contract covers.
            let r = unsafe { ioctl_ptr(self.fd.as_fd(), sys::UFFDIO_ZEROPAGE, &mut z) };
            let n = z.zeropage.max(0) as u64;
            match r {
                Ok(_) => done += n.max(len - done),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => done += n,
                Err(source) => {
                    return Err(FillError {
                        op: "UFFDIO_ZEROPAGE",
                        done: (done + n) as usize,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// UFFDIO_CONTINUE: resolves MINOR faults in `start..start+len` by mapping the pages
    /// already in the page cache (shmem/hugetlbfs registered with MODE_MINOR).
    ///
    /// # Safety
    /// As for [`Uffd::copy`].
    pub unsafe fn cont(&self, start: u64, len: u64, wake: bool) -> Result<(), FillError> {
        let mut c = sys::uffdio_continue {
            range: sys::uffdio_range { start, len },
            mode: if wake {
                0
            } else {
                sys::UFFDIO_CONTINUE_MODE_DONTWAKE
            },
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE reads and writes one `uffdio_continue`; it maps existing
        // page-cache pages, covered by the caller's contract.
        match unsafe { ioctl_ptr(self.fd.as_fd(), sys::UFFDIO_CONTINUE, &mut c) } {
            Ok(_) => Ok(()),
            Err(source) => Err(FillError {
                op: "UFFDIO_CONTINUE",
                done: c.mapped.max(0) as usize,
                source,
            }),
        }
    }

    /// Appends pending events to `out`, at most `max` (1 to 64) at once. With a nonblocking uffd, returns
    /// `Ok(0)` when none is pending; a blocking one waits for the first.
    pub fn read_events(&self, out: &mut Vec<Event>, max: usize) -> Result<usize, UffdError> {
        let mut msgs = [sys::uffd_msg::default(); 64];
        let n = max.clamp(1, msgs.len());
        // SAFETY: `read` writes at most `n * size_of::<uffd_msg>()` bytes into `msgs`, an array
        // of plain-old-data structs valid for any bit pattern.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr().cast(),
                n * std::mem::size_of::<sys::uffd_msg>(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(UffdError::Io(e)),
            };
        }
        let count = r as usize / std::mem::size_of::<sys::uffd_msg>();
        out.extend(msgs[..count].iter().map(Event::from_msg));
        Ok(count)
    }

    /// Waits up to `timeout_ms` for an event to be readable (or the uffd to be closed by the
    /// other side's exit, which shows as POLLERR/POLLHUP). Returns whether it is readable.
    pub fn poll(&self, timeout_ms: i32) -> Result<bool, UffdError> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll` reads and writes the one `pollfd` passed.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(UffdError::Io(e));
        }
        Ok(r > 0)
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A mapping owned by this process (private anonymous memory, or a shared view of a memfd),
/// unmapped on drop. Holds no Rust references to its bytes: users go through raw pointers.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a `Mapping` is an address range; it is as thread-safe as the code that dereferences
// its pointer, which states its own reasons.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out the address.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// An anonymous private mapping of `len` bytes (rounded up to whole pages), readable and
    /// writable, with no swap reservation.
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        Self::map(len, None, true)
    }

    /// A shared mapping of `len` bytes of `fd` from offset 0, writable or read-only.
    pub fn shared(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        Self::map(len, Some(fd), writable)
    }

    fn map(len: usize, fd: Option<BorrowedFd<'_>>, writable: bool) -> io::Result<Mapping> {
        use rustix::mm::{MapFlags, ProtFlags};
        let len = len.max(1).next_multiple_of(page_size());
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping at an address the kernel picks cannot overlap anything Rust
        // knows about.
        let ptr = unsafe {
            match fd {
                None => rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    MapFlags::PRIVATE | MapFlags::NORESERVE,
                ),
                Some(fd) => {
                    rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)
                }
            }
        }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The mapping's start address, as a pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The mapping's start address.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the length is zero; never, since a mapping holds at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `madvise(advice)` over the whole mapping.
    pub fn advise(&self, advice: rustix::mm::Advice) -> io::Result<()> {
        // SAFETY: the advice applies to this mapping only; callers use advice that keeps
        // contents (MADV_HUGEPAGE, ...) unless they own every reference to the bytes.
        unsafe { rustix::mm::madvise(self.ptr.cast(), self.len, advice) }?;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map` with this address and length and nothing
        // borrows it past the `Mapping`'s life (borrowers hold the `Mapping`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}
