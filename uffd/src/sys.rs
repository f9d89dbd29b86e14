//! The kernel's userfaultfd and PAGEMAP_SCAN ABI, written out by hand.
//!
//! Layouts and numbers follow the uapi headers `include/uapi/linux/userfaultfd.h` and
//! `include/uapi/linux/fs.h` of Linux 6.7+ (Debian 12's `linux-libc-dev` is 6.1 and lacks
//! WP_ASYNC and PAGEMAP_SCAN; the `libc` crate has no uffd structs). Every struct is `repr(C)`
//! with only `u64`/`i64` fields (or the packed `uffd_msg` built from fixed-width fields), and a
//! compile-time assertion pins its size to the kernel's, which is also what the ioctl numbers
//! encode. The constants and structs keep the kernel's names and layouts and are documented by
//! the uapi headers they are transcribed from.

#![allow(missing_docs)]
#![allow(non_camel_case_types)]

use std::mem::size_of;

/// `_IOC` from `include/uapi/asm-generic/ioctl.h` (x86-64, arm64, riscv: 2 direction bits,
/// 14 size bits, 8 type bits, 8 number bits).
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}
const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(IOC_READ, ty, nr, size)
}

/// `UFFD_API`: the API version passed in `uffdio_api.api`.
pub const UFFD_API: u64 = 0xAA;
/// `UFFDIO`: the ioctl type byte.
const UFFDIO: u64 = 0xAA;

// `_UFFDIO_*` ioctl numbers; bit `1 << n` of `uffdio_api.ioctls` / `uffdio_register.ioctls`
// says ioctl `n` is available.
pub const _UFFDIO_REGISTER: u64 = 0x00;
pub const _UFFDIO_UNREGISTER: u64 = 0x01;
pub const _UFFDIO_WAKE: u64 = 0x02;
pub const _UFFDIO_COPY: u64 = 0x03;
pub const _UFFDIO_ZEROPAGE: u64 = 0x04;
pub const _UFFDIO_WRITEPROTECT: u64 = 0x06;
pub const _UFFDIO_CONTINUE: u64 = 0x07;
pub const _UFFDIO_API: u64 = 0x3F;

pub const UFFDIO_API: u64 = iowr(UFFDIO, _UFFDIO_API, size_of::<uffdio_api>());
pub const UFFDIO_REGISTER: u64 = iowr(UFFDIO, _UFFDIO_REGISTER, size_of::<uffdio_register>());
pub const UFFDIO_UNREGISTER: u64 = ior(UFFDIO, _UFFDIO_UNREGISTER, size_of::<uffdio_range>());
pub const UFFDIO_WAKE: u64 = ior(UFFDIO, _UFFDIO_WAKE, size_of::<uffdio_range>());
pub const UFFDIO_COPY: u64 = iowr(UFFDIO, _UFFDIO_COPY, size_of::<uffdio_copy>());
pub const UFFDIO_ZEROPAGE: u64 = iowr(UFFDIO, _UFFDIO_ZEROPAGE, size_of::<uffdio_zeropage>());
pub const UFFDIO_WRITEPROTECT: u64 = iowr(
    UFFDIO,
    _UFFDIO_WRITEPROTECT,
    size_of::<uffdio_writeprotect>(),
);
pub const UFFDIO_CONTINUE: u64 = iowr(UFFDIO, _UFFDIO_CONTINUE, size_of::<uffdio_continue>());

/// `USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00)`, issued on `/dev/userfaultfd` (Linux 6.1+).
pub const USERFAULTFD_IOC_NEW: u64 = ioc(0, 0xAA, 0x00, 0);
/// `UFFD_USER_MODE_ONLY`: only faults from user mode are handled (no privilege needed).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

// `UFFD_FEATURE_*` bits.
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

// Registration modes.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;

pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
pub const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;

// `uffd_msg.event` values.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

// `uffd_msg.arg.pagefault.flags` bits.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// `struct uffdio_api { __u64 api; __u64 features; __u64 ioctls; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_api {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range { __u64 start; __u64 len; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_range {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register { struct uffdio_range range; __u64 mode; __u64 ioctls; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_register {
    pub range: uffdio_range,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy { __u64 dst; __u64 src; __u64 len; __u64 mode; __s64 copy; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_copy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_zeropage { struct uffdio_range range; __u64 mode; __s64 zeropage; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_zeropage {
    pub range: uffdio_range,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffdio_writeprotect { struct uffdio_range range; __u64 mode; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_writeprotect {
    pub range: uffdio_range,
    pub mode: u64,
}

/// `struct uffdio_continue { struct uffdio_range range; __u64 mode; __s64 mapped; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_continue {
    pub range: uffdio_range,
    pub mode: u64,
    pub mapped: i64,
}

/// `struct uffd_msg` (declared `__packed` in the header; every field sits at its natural
/// alignment anyway): an 8-byte header `{ __u8 event; __u8 reserved1; __u16 reserved2;
/// __u32 reserved3; }` and a 24-byte union `arg`, kept here as raw words and decoded by
/// [`crate::Event::from_msg`]. For `UFFD_EVENT_PAGEFAULT`, `arg` is `{ __u64 flags; __u64
/// address; __u32 ptid; }`; for REMOVE and UNMAP `{ __u64 start; __u64 end; }`; for REMAP
/// `{ __u64 from; __u64 to; __u64 len; }`; for FORK `{ __u32 ufd; }`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffd_msg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: [u64; 3],
}

// PAGEMAP_SCAN (include/uapi/linux/fs.h).
/// `PAGEMAP_IOCTL_MAGIC`.
const PAGEMAP_IOCTL_MAGIC: u64 = b'f' as u64;
/// `PAGEMAP_SCAN = _IOWR(PAGEMAP_IOCTL_MAGIC, 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 = iowr(PAGEMAP_IOCTL_MAGIC, 16, size_of::<pm_scan_arg>());

// Page categories.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;

/// `PM_SCAN_WP_MATCHING`: write-protect the pages that match, atomically with reporting them.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless every VMA in range is registered with WP_ASYNC.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region { __u64 start; __u64 end; __u64 categories; }`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct page_region {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`: 12 `__u64` fields, 96 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct pm_scan_arg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

const _: () = {
    assert!(size_of::<uffdio_api>() == 24);
    assert!(size_of::<uffdio_range>() == 16);
    assert!(size_of::<uffdio_register>() == 32);
    assert!(size_of::<uffdio_copy>() == 40);
    assert!(size_of::<uffdio_zeropage>() == 32);
    assert!(size_of::<uffdio_writeprotect>() == 24);
    assert!(size_of::<uffdio_continue>() == 32);
    assert!(size_of::<uffd_msg>() == 32);
    assert!(size_of::<page_region>() == 24);
    assert!(size_of::<pm_scan_arg>() == 96);
    // Cross-checks against numbers measured on the project's kernel (shared/KERNEL.md).
    assert!(UFFDIO_WRITEPROTECT == 0xC018_AA06);
    assert!(PAGEMAP_SCAN == 0xC060_6610);
    assert!(UFFDIO_API == 0xC018_AA3F);
    assert!(UFFDIO_REGISTER == 0xC020_AA00);
    assert!(UFFDIO_COPY == 0xC028_AA03);
};
