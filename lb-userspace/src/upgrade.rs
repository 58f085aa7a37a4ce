//! Binary upgrade without a lost connection (SIGUSR2, nginx's signal for it, or `lbctl
//! upgrade`): the running lbd starts the binary found at its own path with its own arguments,
//! and hands it, over a unix socket (SCM_RIGHTS, as Sozu, Pingora and Envoy's hot restart do),
//! the pin directory's lock, the admin and metrics sockets and every listening socket (HTTP/3's
//! UDP ones too). The new lbd adopts the pinned XDP state, serves on the same sockets (nothing
//! is closed, so nothing queued in them is lost), says READY, and answers `ready` on the
//! socket; the old one then stops accepting, drains and exits, sending the new one its proxy
//! counters last (so they continue, the requests it drained included). A new binary that fails (bad config, cannot
//! start, no `ready` within `READY_TIMEOUT`) is stopped, and the old one keeps serving.
use std::{
    collections::HashMap,
    io::{IoSlice, IoSliceMut, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{net::UnixStream, process::CommandExt},
    },
    path::PathBuf,
    time::Duration,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// The environment variable that names the new lbd's end of the handover socket.
pub const FD_ENV: &str = "SLUICE_UPGRADE_FD";
/// How long the old lbd waits for the new one's `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most descriptors one handover carries (the kernel's SCM_MAX_FD is 253).
const MAX_FDS: usize = 250;
/// The largest manifest read.
const MAX_MANIFEST: usize = 64 << 10;
/// The largest counters text read.
const MAX_COUNTERS: usize = 16 << 20;
/// How long a new lbd waits for the old one's counters (its drain, and then some).
pub const COUNTERS_TIMEOUT: Duration = Duration::from_secs(120);

/// What asks the signal loop for an upgrade (`lbctl upgrade`), and hears the new lbd's pid
/// or why there is none.
pub type Asked = tokio::sync::oneshot::Sender<Result<u32, UpgradeError>>;

/// Why an upgrade did not happen (the old lbd keeps serving) or a handover was not received.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{doing}: {error}")]
    Io { doing: &'static str, error: std::io::Error },
    #[error("{0} sockets to hand over: more than {MAX_FDS}")]
    TooMany(usize),
    #[error("the handover was malformed: {0}")]
    Malformed(String),
    #[error("the new lbd (pid {pid}) failed: {why}")]
    Failed { pid: u32, why: String },
}

fn io(doing: &'static str) -> impl FnOnce(std::io::Error) -> UpgradeError {
    move |error| UpgradeError::Io { doing, error }
}

/// What the descriptors of a handover are, in the order they are sent.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    lock: bool,
    admin: bool,
    metrics: bool,
    /// Each listening address and how many sockets it has (one per worker).
    listeners: Vec<(SocketAddr, usize)>,
    /// Each HTTP/3 listener's address and how many UDP sockets it has (one per worker); none
    /// from an lbd older than HTTP/3.
    #[serde(default)]
    datagrams: Vec<(SocketAddr, usize)>,
}

/// What a running lbd can hand over: its own duplicates of the descriptors, kept from the
/// start, so they stay valid whatever its tasks do with theirs.
#[derive(Default)]
pub struct Handover {
    pub lock: Option<OwnedFd>,
    pub admin: Option<OwnedFd>,
    pub metrics: Option<OwnedFd>,
    pub listeners: Vec<(SocketAddr, Vec<OwnedFd>)>,
    pub datagrams: Vec<(SocketAddr, Vec<OwnedFd>)>,
}

/// Duplicates a descriptor to keep for a handover.
pub fn keep(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// The program and arguments the running lbd was started with, read at start: the path names
/// whatever binary is there at upgrade time (a package upgrade replaces the file).
#[derive(Debug, Clone)]
pub struct Exec {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

impl Exec {
    pub fn current() -> std::io::Result<Exec> {
        Ok(Exec { program: std::env::current_exe()?, args: std::env::args_os().skip(1).collect() })
    }
}

/// A new lbd that serves, and the way to it for the last word.
pub struct Successor {
    pub pid: u32,
    channel: UnixStream,
}

impl Successor {
    /// Sends the proxy's counters (their text exposition) once this lbd has drained. Past
    /// MAX_COUNTERS the text is cut after a whole line: a cut line would carry a wrong count.
    pub fn send_counters(mut self, text: &str) -> Result<(), UpgradeError> {
        let bytes = text.as_bytes();
        let bytes = match bytes.len() <= MAX_COUNTERS {
            true => bytes,
            false => &bytes[..bytes[..MAX_COUNTERS].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)],
        };
        self.channel.write_all(&(bytes.len() as u32).to_be_bytes()).map_err(io("sending the counters"))?;
        self.channel.write_all(bytes).map_err(io("sending the counters"))
    }
}

/// Starts the new lbd, hands it everything and waits for its `ready`.
/// Blocks for up to `READY_TIMEOUT`: run it off the async workers.
pub fn start(exec: &Exec, handover: &Handover) -> Result<Successor, UpgradeError> {
    let (ours, theirs) = UnixStream::pair().map_err(io("creating the handover socket"))?;
    let their_fd = theirs.as_raw_fd();
    let mut command = std::process::Command::new(&exec.program);
    command.args(&exec.args).env(FD_ENV, their_fd.to_string());
    // SAFETY: runs in the child between fork and exec, calling only fcntl (async-signal-safe)
    // on a descriptor the child inherited: the handover socket stays open across exec.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(io("starting the new lbd"))?;
    drop(theirs);
    let pid = child.id();
    let failed = |child: &mut std::process::Child, why: String| {
        // A new lbd that gave up exits by itself: give it a moment before stopping it.
        let exited = (0..50).find_map(|_| {
            let status = child.try_wait().ok().flatten();
            if status.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            status
        });
        let status = match exited {
            Some(status) => status.to_string(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                "stopped".to_owned()
            }
        };
        UpgradeError::Failed { pid, why: format!("{why} ({status})") }
    };
    if let Err(err) = send(&ours, handover) {
        return Err(failed(&mut child, err.to_string()));
    }
    ours.set_read_timeout(Some(READY_TIMEOUT)).map_err(io("setting the handover timeout"))?;
    let mut answer = [0u8; 6];
    match (&ours).read_exact(&mut answer) {
        Ok(()) if &answer == b"ready\n" => Ok(Successor { pid, channel: ours }),
        Ok(()) => Err(failed(&mut child, format!("it answered {:?}", String::from_utf8_lossy(&answer)))),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(failed(&mut child, "it exited before it was ready (its log says why)".into()))
        }
        Err(err) => Err(failed(&mut child, format!("no ready within {READY_TIMEOUT:?}: {err}"))),
    }
}

/// Sends the manifest and the descriptors in one message.
fn send(socket: &UnixStream, handover: &Handover) -> Result<(), UpgradeError> {
    let manifest = Manifest {
        lock: handover.lock.is_some(),
        admin: handover.admin.is_some(),
        metrics: handover.metrics.is_some(),
        listeners: handover.listeners.iter().map(|(a, fds)| (*a, fds.len())).collect(),
        datagrams: handover.datagrams.iter().map(|(a, fds)| (*a, fds.len())).collect(),
    };
    let fds: Vec<RawFd> = [&handover.lock, &handover.admin, &handover.metrics]
        .into_iter()
        .flatten()
        .chain(handover.listeners.iter().flat_map(|(_, fds)| fds))
        .chain(handover.datagrams.iter().flat_map(|(_, fds)| fds))
        .map(AsRawFd::as_raw_fd)
        .collect();
    if fds.len() > MAX_FDS {
        return Err(UpgradeError::TooMany(fds.len()));
    }
    let text = serde_json::to_vec(&manifest).map_err(|e| UpgradeError::Malformed(e.to_string()))?;
    let length = (text.len() as u32).to_be_bytes();
    let iov = [IoSlice::new(&length), IoSlice::new(&text)];
    let sent =
        sendmsg::<()>(socket.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
            .map_err(|e| UpgradeError::Io { doing: "sending the sockets", error: e.into() })?;
    if sent != length.len() + text.len() {
        return Err(UpgradeError::Malformed(format!("sent {sent} of {} bytes", length.len() + text.len())));
    }
    Ok(())
}

/// What a new lbd received from the one it replaces.
pub struct Inherited {
    pub lock: Option<OwnedFd>,
    pub admin: Option<OwnedFd>,
    pub metrics: Option<OwnedFd>,
    pub listeners: HashMap<SocketAddr, Vec<OwnedFd>>,
    pub datagrams: HashMap<SocketAddr, Vec<OwnedFd>>,
    channel: UnixStream,
}

impl Inherited {
    /// The handover, if this lbd was started by an upgrade (`FD_ENV` set).
    pub fn receive() -> Result<Option<Inherited>, UpgradeError> {
        let Some(value) = std::env::var_os(FD_ENV) else { return Ok(None) };
        // SAFETY: only lbd's own upgrade path sets FD_ENV, on a process it starts.
        unsafe { std::env::remove_var(FD_ENV) };
        let fd: RawFd = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .filter(|fd| *fd > 2)
            .ok_or_else(|| UpgradeError::Malformed(format!("{FD_ENV}={value:?}")))?;
        // SAFETY: the old lbd left this descriptor open across exec for us alone, and nothing
        // else in this process owns it.
        let channel = unsafe { UnixStream::from_raw_fd(fd) };
        // The descriptor came without close-on-exec: set it, so birdc and others do not inherit it.
        // SAFETY: fcntl on a descriptor this process owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Inherited::from(channel).map(Some)
    }

    /// Reads the handover from `channel`.
    fn from(channel: UnixStream) -> Result<Inherited, UpgradeError> {
        channel
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("setting the handover timeout"))?;
        let (manifest, fds) = receive(&channel)?;
        let mut fds = fds.into_iter();
        let mut next = || {
            fds.next().ok_or_else(|| UpgradeError::Malformed("fewer sockets than the manifest says".into()))
        };
        let lock = if manifest.lock { Some(next()?) } else { None };
        let admin = if manifest.admin { Some(next()?) } else { None };
        let metrics = if manifest.metrics { Some(next()?) } else { None };
        let mut by_address = |listed: Vec<(SocketAddr, usize)>| -> Result<_, UpgradeError> {
            let mut sockets = HashMap::new();
            for (address, count) in listed {
                sockets.insert(address, (0..count).map(|_| next()).collect::<Result<Vec<_>, _>>()?);
            }
            Ok(sockets)
        };
        let listeners = by_address(manifest.listeners)?;
        let datagrams = by_address(manifest.datagrams)?;
        Ok(Inherited { lock, admin, metrics, listeners, datagrams, channel })
    }

    /// Tells the old lbd that this one serves: it stops accepting and drains. The answer waits
    /// for its last word.
    pub fn ready(mut self) -> Result<Predecessor, UpgradeError> {
        self.channel.write_all(b"ready\n").map_err(io("answering the old lbd"))?;
        Ok(Predecessor { channel: self.channel })
    }
}

/// The lbd this one replaced, draining.
pub struct Predecessor {
    channel: UnixStream,
}

impl Predecessor {
    /// Its proxy counters, sent once it has drained (None: it ended without them). Blocks for
    /// up to `COUNTERS_TIMEOUT`.
    pub fn counters(mut self) -> Result<Option<String>, UpgradeError> {
        self.channel.set_read_timeout(Some(COUNTERS_TIMEOUT)).map_err(io("waiting for the counters"))?;
        let mut length = [0u8; 4];
        match self.channel.read_exact(&mut length) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(UpgradeError::Io { doing: "waiting for the counters", error }),
        }
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_COUNTERS {
            return Err(UpgradeError::Malformed(format!("{length} bytes of counters")));
        }
        let mut text = vec![0u8; length];
        self.channel.read_exact(&mut text).map_err(io("reading the counters"))?;
        String::from_utf8(text).map(Some).map_err(|e| UpgradeError::Malformed(e.to_string()))
    }
}

/// Reads the manifest and the descriptors sent by [`send`].
fn receive(channel: &UnixStream) -> Result<(Manifest, Vec<OwnedFd>), UpgradeError> {
    let mut length = [0u8; 4];
    let mut text = vec![0u8; MAX_MANIFEST];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (received, fds) = {
        let mut iov = [IoSliceMut::new(&mut length), IoSliceMut::new(&mut text)];
        let message =
            recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(|e| UpgradeError::Io { doing: "receiving the sockets", error: e.into() })?;
        let mut fds = Vec::new();
        for cmsg in
            message.cmsgs().map_err(|e| UpgradeError::Io { doing: "reading the sockets", error: e.into() })?
        {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: SCM_RIGHTS gave this process new descriptors that nothing owns yet.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (message.bytes, fds)
    };
    let declared = u32::from_be_bytes(length) as usize;
    if received < 4 || declared != received - 4 {
        return Err(UpgradeError::Malformed(format!("{received} bytes for a {declared}-byte manifest")));
    }
    let manifest: Manifest =
        serde_json::from_slice(&text[..declared]).map_err(|e| UpgradeError::Malformed(e.to_string()))?;
    Ok((manifest, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_handed_over_arrive_as_the_same_sockets() {
        let listeners: Vec<std::net::TcpListener> =
            (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let address = listeners[0].local_addr().unwrap();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let handover = Handover {
            lock: None,
            admin: None,
            metrics: Some(keep(std::os::fd::AsFd::as_fd(&metrics)).unwrap()),
            listeners: vec![(
                address,
                listeners.iter().map(|l| keep(std::os::fd::AsFd::as_fd(l)).unwrap()).collect(),
            )],
            datagrams: vec![(udp.local_addr().unwrap(), vec![keep(std::os::fd::AsFd::as_fd(&udp)).unwrap()])],
        };
        let (ours, theirs) = UnixStream::pair().unwrap();
        send(&ours, &handover).unwrap();
        let mut got = Inherited::from(theirs).unwrap();
        assert!(got.lock.is_none() && got.admin.is_none());
        let received = std::net::TcpListener::from(got.metrics.take().unwrap());
        assert_eq!(received.local_addr().unwrap(), metrics.local_addr().unwrap());
        let sockets = got.listeners.remove(&address).unwrap();
        assert_eq!(sockets.len(), 2);
        // The very socket: a connection made to it is accepted through the received copy.
        let first = std::net::TcpListener::from(sockets.into_iter().next().unwrap());
        let _client = std::net::TcpStream::connect(address).unwrap();
        first.set_nonblocking(false).unwrap();
        assert!(first.accept().is_ok());
        // An HTTP/3 listener's UDP socket, the very one too: a datagram to it is read there.
        let datagram =
            std::net::UdpSocket::from(got.datagrams.remove(&udp.local_addr().unwrap()).unwrap().remove(0));
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"quic", udp.local_addr().unwrap())
            .unwrap();
        let mut read = [0u8; 8];
        assert_eq!(datagram.recv(&mut read).unwrap(), 4);
        let predecessor = got.ready().unwrap();
        let mut answer = [0u8; 6];
        (&ours).read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"ready\n");
        // The old lbd's last word: its counters.
        Successor { pid: 0, channel: ours }.send_counters("http_requests_total{} 3\n").unwrap();
        assert_eq!(predecessor.counters().unwrap().as_deref(), Some("http_requests_total{} 3\n"));
    }
}
