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

/// When `path` was last modified; None when it cannot be told (gone, unreadable). What the
/// files read again on change compare (credentials, certificates).
pub fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads a config file: a regular file, bounded, UTF-8.
pub fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    open_regular(path)?.take(MAX_FILE_BYTES).read_to_string(&mut text)?;
    Ok(text)
}
