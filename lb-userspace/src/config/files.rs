//! Reading config files: regular files only, bounded, opened without blocking (a FIFO or a
//! device is refused at once).
use super::*;

/// The largest config file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Opens `path` for reading without blocking (a FIFO or a device would hang a plain open or
/// read) and checks it is a regular file of at most `MAX_FILE_BYTES`.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    Ok(file)
}

/// What the files read again on change compare (credentials, certificates, keys): when the
/// file was last modified, its length and its inode. A file replaced by a rename (a new inode)
/// or rewritten to another length has changed even where its time is the same or older than
/// before (`rsync -t`, `cp -p` and deploy tools keep the source's time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: std::time::SystemTime,
    len: u64,
    inode: u64,
}

/// `path`'s stamp; None when it cannot be told (gone, unreadable).
pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: meta.modified().ok()?, len: meta.len(), inode: meta.ino() })
}

/// Whether lbd could make or write the folder `path` (an ACME state folder): its nearest
/// existing ancestor is a folder it may write in, on a file system mounted writable (a unit's
/// `ProtectSystem=strict` leaves only its listed paths so).
pub fn writable_folder(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a folder", existing.display()),
        ));
    }
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call; access only reads it.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(std::io::Error::new(error.kind(), format!("{}: {error}", existing.display())));
    }
    Ok(())
}

/// Reads a config file: a regular file, bounded, UTF-8.
pub fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    open_regular(path)?.take(MAX_FILE_BYTES).read_to_string(&mut text)?;
    Ok(text)
}
