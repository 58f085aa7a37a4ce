//! An integer socket option set with `setsockopt`, for the options neither std nor socket2
//! names: `TCP_DEFER_ACCEPT` on the listening sockets, `SO_RCVBUFFORCE` on HTTP/3's.
use std::os::fd::AsRawFd;

/// Sets option `name` of `level` on `socket` to `value`.
pub fn set(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match set {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
