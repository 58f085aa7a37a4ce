//! The bed's ceiling for HTTP/1.1 keep-alive: a proxy that forwards bytes and does nothing else.
//!
//! Each client gets its own backend connection (round robin over the backends); whatever one
//! side sends is read once and written once to the other, from one level-triggered epoll loop.
//! No HTTP, no pool, no timers: the four system calls a proxied request needs and the loop's
//! `epoll_wait`. `bench l7` runs it beside the proxies, so every run shows how far above
//! HAProxy and nginx any epoll proxy could get on the bed (docs/performance.md).
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, IntoRawFd, RawFd},
};

use anyhow::{Context as _, Result, bail};

/// The most descriptors the loop tracks (the bench opens 64 clients).
const MAX_FDS: usize = 65_536;
/// One read's buffer: any request or answer of the bench in one read.
const BUFFER: usize = 64 * 1024;

/// Forwards between clients of `listen` and `backends` until killed.
pub fn run(listen: SocketAddr, backends: &[SocketAddr]) -> Result<()> {
    if backends.is_empty() {
        bail!("no backends");
    }
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    listener.set_nonblocking(true)?;
    // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
    let epoll = unsafe { libc::epoll_create1(0) };
    if epoll < 0 {
        bail!("epoll_create1: {}", std::io::Error::last_os_error());
    }
    let watch = |fd: RawFd| -> Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        // SAFETY: `event` is a valid epoll_event for the call; both descriptors are open.
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
            bail!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    watch(listener.as_raw_fd())?;
    let mut peer = vec![-1 as RawFd; MAX_FDS];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; BUFFER];
    let mut next = 0;
    loop {
        // SAFETY: `events` has room for the 256 events asked for.
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 256, -1) };
        for event in &events[..ready.max(0) as usize] {
            let fd = event.u64 as RawFd;
            if fd == listener.as_raw_fd() {
                while let Ok((client, _)) = listener.accept() {
                    let backend = TcpStream::connect(backends[next % backends.len()])?;
                    next += 1;
                    for stream in [&client, &backend] {
                        stream.set_nodelay(true)?;
                        stream.set_nonblocking(true)?;
                    }
                    let (client, backend) = (client.into_raw_fd(), backend.into_raw_fd());
                    if client as usize >= MAX_FDS || backend as usize >= MAX_FDS {
                        bail!("more than {MAX_FDS} descriptors");
                    }
                    (peer[client as usize], peer[backend as usize]) = (backend, client);
                    watch(client)?;
                    watch(backend)?;
                }
                continue;
            }
            let other = peer[fd as usize];
            if other < 0 {
                continue; // closed earlier in this batch
            }
            // SAFETY: `buf` is valid for BUFFER bytes; `fd` is an open socket of the loop's.
            let read = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), BUFFER) };
            if read < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                continue;
            }
            // SAFETY: the first `read` bytes of `buf` were just filled; `other` is open.
            let written =
                (read > 0).then(|| unsafe { libc::write(other, buf.as_ptr().cast(), read as usize) });
            // Closed, failed, or a short write (not seen with the bench's small messages): both
            // sides close.
            if written != Some(read) {
                for side in [fd, other] {
                    // SAFETY: closing a descriptor this loop owns, once (its peer entry is reset).
                    unsafe { libc::close(side) };
                    peer[side as usize] = -1;
                }
            }
        }
    }
}
