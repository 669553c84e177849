//! The few kernel calls aya 0.14 does not expose: bpffs detection and
//! mounting, opening a pinned object, a link's XDP ifindex, and detaching a
//! link synchronously.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `BPF_FS_MAGIC` from <linux/magic.h>.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

// Commands of the bpf(2) syscall (<linux/bpf.h>, enum bpf_cmd).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34; // Linux 5.9

/// Big enough for every bpf_attr member used here; the kernel accepts a
/// shorter or longer attr as long as the bytes it does not know are zero.
type Attr = [u64; 16];

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zeroed, properly aligned buffer at least as large as
    // the bpf_attr members these commands read or write, and its size is
    // passed along.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: statfs only writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, st a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 depending on the target
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// An exclusive flock(2) on a directory, released when the fd closes.
pub fn lock_dir(path: &Path) -> io::Result<fs::File> {
    let dir = fs::File::open(path)?;
    // SAFETY: flock on an fd we own; blocks until the lock is ours.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dir)
}

/// `mount -t bpf bpf <target>`.
pub fn mount_bpffs(target: &Path) -> io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: all pointers are valid NUL-terminated strings; no data arg.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pinned BPF object (program, map or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr: Attr = [0; 16];
    // bpf_attr.pathname is the first member of the BPF_OBJ_GET struct.
    attr[0] = c.as_ptr() as u64;
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(BPF_OBJ_GET) returned no fd"))?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says about an XDP link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// The interface it is attached to; 0 once the interface is gone or the
    /// link was detached.
    pub ifindex: u32,
}

/// `BPF_LINK_TYPE_XDP` (<linux/bpf.h>, enum bpf_link_type).
pub const BPF_LINK_TYPE_XDP: u32 = 6;

pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8
    // whose xdp member starts with the ifindex (so at byte 16).
    let mut info = [0u32; 64];
    let mut attr: Attr = [0; 16];
    // bpf_attr.info = { bpf_fd: u32, info_len: u32, info: u64 }.
    attr[0] = u64::from(fd.as_raw_fd() as u32) | (std::mem::size_of_val(&info) as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let ifindex = if info[0] == BPF_LINK_TYPE_XDP {
        info[4]
    } else {
        0
    };
    Ok(LinkInfo {
        link_type: info[0],
        id: info[1],
        prog_id: info[2],
        ifindex,
    })
}

/// Detaches a link now, whoever else holds it (Linux 5.9); unpinning alone
/// frees it later from a workqueue.
pub fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr: Attr = [0; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}
