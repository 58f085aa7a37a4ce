//! A credentials file's parsed contents (API keys, htpasswd users), read again when the file's
//! modification time changes, looked at no more than once a second and never under a lock the
//! requests wait on: a request loads the current contents with one atomic read.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;

use crate::config::{FileStamp, read_file, stamp};

/// What an unreadable credentials file means until it is fixed.
pub const REFUSING: &str = "refusing every request";

/// Turns a file's text into its contents, or says what is wrong with it.
pub type Parse<T> = fn(&str) -> Result<T, String>;

pub struct WatchedFile<T> {
    path: PathBuf,
    /// What the file holds, for the log ("API keys", "basic_auth users").
    what: &'static str,
    parse: Parse<T>,
    current: ArcSwap<T>,
    stamp: Mutex<Option<FileStamp>>,
    /// The second (since the epoch) the file was last looked at.
    looked_at: AtomicU64,
}

fn read<T>(path: &Path, parse: Parse<T>) -> Result<T, String> {
    read_file(path).map_err(|e| e.to_string()).and_then(|text| parse(&text))
}

impl<T: Default> WatchedFile<T> {
    /// The file as it is now. Unreadable or refused (it was checked when the config was read,
    /// so it changed since), it holds `T::default()` (no keys, no users: every request
    /// refused), logged with what that means (`meanwhile`).
    pub fn new(path: PathBuf, what: &'static str, parse: Parse<T>, meanwhile: &str) -> WatchedFile<T> {
        let stamp = stamp(&path);
        let current = match read(&path, parse) {
            Ok(contents) => contents,
            Err(err) => {
                log::error!("{what} {}: {err}; {meanwhile} until it is fixed", path.display());
                T::default()
            }
        };
        WatchedFile {
            path,
            what,
            parse,
            current: ArcSwap::from_pointee(current),
            stamp: Mutex::new(stamp),
            looked_at: AtomicU64::new(0),
        }
    }

    /// The contents, read again first if the file changed (looked at once a second at most). A
    /// change that cannot be read or parsed is logged and the previous contents kept.
    pub fn current(&self) -> Arc<T> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if self.looked_at.swap(now, Ordering::Relaxed) != now {
            self.reread_if_changed();
        }
        self.current.load_full()
    }

    /// Makes the next `current` look at the file whatever the second (tests).
    #[cfg(test)]
    pub fn look_again(&self) {
        self.looked_at.store(0, Ordering::Relaxed);
    }

    fn reread_if_changed(&self) {
        let stamp = stamp(&self.path);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if stamp == *last {
            return;
        }
        *last = stamp;
        let (what, path) = (self.what, self.path.display());
        match read(&self.path, self.parse) {
            Ok(contents) => {
                log::info!("{what} reloaded from {path}");
                self.current.store(contents.into());
            }
            Err(err) => log::error!("{what} {path}: {err}; keeping the previous ones"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Result<Vec<String>, String> {
        if text.contains("bad") {
            return Err("a bad line".into());
        }
        Ok(text.lines().map(str::to_owned).collect())
    }

    #[test]
    fn a_change_is_read_and_a_broken_one_keeps_the_last_good_contents() {
        let dir = std::env::temp_dir().join(format!("sluice-watched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "one\n").unwrap();
        let watched = WatchedFile::new(path.clone(), "test keys", lines, REFUSING);
        assert_eq!(*watched.current(), ["one"]);

        let touch = |text: &str, age: u64| {
            std::fs::write(&path, text).unwrap();
            // A distinct modification time, whatever the file system's resolution.
            let when = SystemTime::now() - std::time::Duration::from_secs(age);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
        };
        touch("one\ntwo\n", 100);
        watched.look_again();
        assert_eq!(*watched.current(), ["one", "two"]);
        touch("bad\n", 50);
        watched.look_again();
        assert_eq!(*watched.current(), ["one", "two"], "a broken file keeps what was read before");

        // Replaced by a rename with an older time, as `rsync -t` or `cp -p` then `mv` deploy a
        // file: another inode, so read again.
        let staged = dir.join("keys.new");
        std::fs::write(&staged, "three\n").unwrap();
        let older = SystemTime::now() - std::time::Duration::from_secs(500);
        std::fs::File::options().write(true).open(&staged).unwrap().set_modified(older).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        watched.look_again();
        assert_eq!(*watched.current(), ["three"], "a file replaced with an older time");

        std::fs::remove_file(&path).unwrap();
        let gone = WatchedFile::new(path, "test keys", lines, REFUSING);
        assert!(gone.current().is_empty(), "an unreadable file holds nothing");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
