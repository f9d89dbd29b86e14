//! Guards for shared mappings of files that another process may truncate. Touching a mapped page
//! past the end of its file raises SIGBUS, which would end the whole process (every region it
//! holds). A guarded mapping instead has the faulting page and the rest of the range replaced by
//! anonymous zero pages and is marked *poisoned*: its reader checks [`Guard::poisoned`] after
//! reading and reports the file as resized. The check is one atomic load, so the hot path keeps
//! reading the mapping directly (no `pread` copy).
//!
//! Rule: only kernel-raised SIGBUS at an address inside a registered range is handled here; every
//! other SIGBUS (another mapping, or one sent with `kill`/`tgkill`, as lazy regions do) goes to the
//! handler that was installed before, or to the default action.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many mappings may be guarded at once.
const SLOTS: usize = 4096;

struct Slot {
    /// First byte of the range; 0 when the slot is free, `usize::MAX` while being filled.
    start: AtomicUsize,
    /// One past the range's last byte (page aligned).
    end: AtomicUsize,
    poisoned: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below, nothing else
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    poisoned: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
/// Slots at and past this index have never been used: the handler looks no further.
static USED: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS action in force before ours, to pass other signals on to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A registered range; dropping it unregisters the range. Drop it before unmapping the range.
#[derive(Debug)]
pub struct Guard {
    slot: usize,
}

/// Every guard slot is taken.
#[derive(Debug, thiserror::Error)]
#[error("more than {SLOTS} mapped files are guarded at once")]
pub struct TooManyGuards;

impl Guard {
    /// Guards `len` bytes from `ptr`, the start of a shared file mapping.
    pub fn new(ptr: *const u8, len: usize) -> Result<Guard, TooManyGuards> {
        install();
        let page = PAGE.load(Ordering::Relaxed);
        let start = ptr as usize;
        let end = start + len.max(1).next_multiple_of(page);
        for (i, s) in TABLE.iter().enumerate() {
            if s.start
                .compare_exchange(0, usize::MAX, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                s.poisoned.store(false, Ordering::Relaxed);
                s.end.store(end, Ordering::Relaxed);
                USED.fetch_max(i + 1, Ordering::Release);
                s.start.store(start, Ordering::Release);
                return Ok(Guard { slot: i });
            }
        }
        Err(TooManyGuards)
    }

    /// Whether a read or write of the range faulted because the file no longer reached it; the
    /// bytes read since then are zeros that the file does not hold.
    pub fn poisoned(&self) -> bool {
        TABLE[self.slot].poisoned.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        TABLE[self.slot].start.store(0, Ordering::Release);
    }
}

fn install() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction is a valid value to fill; `on_sigbus` has the signature
        // SA_SIGINFO asks for and only calls async-signal-safe functions (mmap, sigaction,
        // raise) and atomics.
        unsafe {
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigbus as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut ours.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, &ours, &mut previous);
            previous
        }
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: raised by the kernel for this access (BUS_ADRERR past the end of a file).
    if code > 0 {
        let page = PAGE.load(Ordering::Relaxed);
        for s in &TABLE[..USED.load(Ordering::Acquire).min(SLOTS)] {
            let start = s.start.load(Ordering::Acquire);
            let end = s.end.load(Ordering::Relaxed);
            if start == 0 || start == usize::MAX || !(start..end).contains(&addr) {
                continue;
            }
            let from = addr & !(page - 1);
            // SAFETY: [from, end) lies inside a live mapping of this process (the faulting
            // thread is reading it through a borrow of its owner); replacing its pages with
            // zeros changes bytes that a racing writer could have changed anyway, and the
            // reader learns of it through `poisoned`.
            let p = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                s.poisoned.store(true, Ordering::Release);
                return;
            }
        }
    }
    pass_on(sig, info, ctx, code);
}

/// Hands a SIGBUS that is not ours to the action in force before ours.
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, code: i32) {
    let Some(prev) = PREVIOUS.get() else { return };
    match prev.sa_sigaction {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // SAFETY: restoring the default action, then letting it act: a faulting access
            // faults again on return, a sent signal is raised again.
            unsafe {
                libc::sigaction(sig, prev, std::ptr::null_mut());
                if code <= 0 {
                    libc::raise(sig);
                }
            }
        }
        f if prev.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous action was installed as an SA_SIGINFO handler.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(f) };
            f(sig, info, ctx)
        }
        f => {
            // SAFETY: the previous action was installed as a plain handler.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(f) };
            f(sig)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_truncated_file_reads_as_poisoned_zeros_not_a_signal() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 64 << 10]).unwrap();
        // SAFETY: the test owns the file; truncating it under the mapping is the point.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let guard = Guard::new(map.as_ptr(), map.len()).unwrap();
        assert_eq!(map[40 << 10], 7);
        assert!(!guard.poisoned());
        f.set_len(8 << 10).unwrap();
        assert_eq!(map[100], 7, "bytes still inside the file");
        assert!(!guard.poisoned());
        assert_eq!(map[40 << 10], 0, "past the end: a zero page, not SIGBUS");
        assert!(guard.poisoned());
        drop(guard);
    }

    #[test]
    fn slots_are_reused() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        // SAFETY: as above.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        for _ in 0..SLOTS + 10 {
            let g = Guard::new(map.as_ptr(), map.len()).unwrap();
            assert!(!g.poisoned());
        }
    }
}
