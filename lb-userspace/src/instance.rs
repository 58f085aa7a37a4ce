//! One lbd per pin directory, and a pin directory only root can change: the directory is made
//! 0700, one owned by another user or writable by group or others is refused (whoever can
//! unlink `link` there can detach XDP), and a running lbd holds an exclusive `flock` on it,
//! so a second `lbd run` or an `lbd stop --detach` fails before touching anything.
use std::{
    fs::File,
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("pin directory {0}: {1} (is bpffs mounted?)")]
    Io(PathBuf, io::Error),
    #[error("pin directory {0} is owned by uid {1}, not by lbd's uid {2}: refused")]
    Owner(PathBuf, u32, u32),
    #[error("pin directory {0} has mode {1:o}: writable by group or others, refused (chmod 0700 it)")]
    Mode(PathBuf, u32),
    #[error("another lbd is running with pin directory {0} (it holds the lock): stop it first")]
    Running(PathBuf),
}

/// The lock a running lbd holds on its pin directory (released when dropped or at exit).
pub struct InstanceLock {
    _dir: File,
}

/// Makes `dir` (0700) if missing and checks who may change it.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), InstanceError> {
    let io_err = |err| InstanceError::Io(dir.to_owned(), err);
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err)?;
    }
    let meta = std::fs::metadata(dir).map_err(io_err)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(InstanceError::Owner(dir.to_owned(), meta.uid(), me));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(InstanceError::Mode(dir.to_owned(), meta.mode() & 0o7777));
    }
    Ok(())
}

impl InstanceLock {
    /// A duplicate of the locked descriptor, handed to a new lbd on upgrade: the lock belongs
    /// to the open directory, so the new lbd holds it as soon as it has the descriptor.
    pub fn keep(&self) -> io::Result<std::os::fd::OwnedFd> {
        std::os::fd::AsFd::as_fd(&self._dir).try_clone_to_owned()
    }
}

/// Takes over the lock an old lbd handed over (`upgrade.rs`): `held` is its locked directory.
pub fn adopt(dir: &Path, held: std::os::fd::OwnedFd) -> Result<InstanceLock, InstanceError> {
    let file = File::from(held);
    let same = file.metadata().and_then(|m| {
        Ok((m.dev(), m.ino()) == {
            let d = std::fs::metadata(dir)?;
            (d.dev(), d.ino())
        })
    });
    if !same.map_err(|err| InstanceError::Io(dir.to_owned(), err))? {
        return Err(InstanceError::Io(
            dir.to_owned(),
            io::Error::other("the lock handed over is not this pin directory's"),
        ));
    }
    // SAFETY: flock on a descriptor we own; the same open directory is already locked, so this
    // returns at once.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(InstanceError::Io(dir.to_owned(), io::Error::last_os_error()));
    }
    Ok(InstanceLock { _dir: file })
}

/// Takes the pin directory's lock without waiting.
pub fn lock(dir: &Path) -> Result<InstanceLock, InstanceError> {
    let file = File::open(dir).map_err(|err| InstanceError::Io(dir.to_owned(), err))?;
    // SAFETY: flock on a descriptor we own; LOCK_NB makes it return at once.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => InstanceError::Running(dir.to_owned()),
            _ => InstanceError::Io(dir.to_owned(), err),
        });
    }
    Ok(InstanceLock { _dir: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("sluice-instance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_pin_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let first = lock(&dir).unwrap();
        assert!(matches!(lock(&dir), Err(InstanceError::Running(_))));
        drop(first);
        lock(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        assert!(matches!(prepare_pin_dir(&dir), Err(InstanceError::Mode(..))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
