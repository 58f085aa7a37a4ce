//! A BPF_F_MMAPABLE array mapped into lbd's memory: read and written with plain loads and
//! stores instead of a syscall per element.
use std::{marker::PhantomData, path::Path};

use aya::maps::MapData;

use crate::dataplane::{DataplaneError, Doing as _, Result, tables::open};

/// The elements of one pinned array, shared with the kernel. The XDP program may write them at
/// any time, so they are accessed through raw pointers, never Rust references.
pub struct MappedArray<T> {
    _data: MapData,
    ptr: *mut T,
    len: usize,
    bytes: usize,
    _element: PhantomData<T>,
}

impl<T: Copy> MappedArray<T> {
    /// Maps the array pinned as `name` under `pin_dir` read/write.
    pub fn open(pin_dir: &Path, name: &str) -> Result<MappedArray<T>> {
        let data = open(pin_dir, name)?;
        let info = data.info().doing(format_args!("reading {name}'s info"))?;
        if info.value_size() as usize != size_of::<T>() {
            return Err(DataplaneError::Unexpected(format!(
                "{name}: value size {} where {} was expected",
                info.value_size(),
                size_of::<T>()
            )));
        }
        let len = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
        // SAFETY: mapping a BPF array fd shared and read/write, as the kernel allows for
        // BPF_F_MMAPABLE arrays; the mapping lives as long as this struct.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Io {
                doing: format!("mmap of {name} (was it created without BPF_F_MMAPABLE?)"),
                error: std::io::Error::last_os_error(),
            });
        }
        Ok(MappedArray { _data: data, ptr: ptr.cast(), len, bytes, _element: PhantomData })
    }

    /// Elements in the array.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer to element `index` (panics out of range).
    pub fn at(&self, index: usize) -> *mut T {
        assert!(index < self.len, "element {index} of {}", self.len);
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.ptr.add(index) }
    }

    /// Element `index`, read once.
    pub fn get(&self, index: usize) -> T {
        // SAFETY: an aligned, in-bounds element; any bits are valid for the Pod types mapped.
        unsafe { self.at(index).read_volatile() }
    }

    /// Writes element `index`.
    pub fn set(&mut self, index: usize, value: T) {
        // SAFETY: an aligned, in-bounds element; &mut self: the only writer in this process.
        unsafe { self.at(index).write_volatile(value) }
    }
}

// SAFETY: the mapping belongs to this struct alone; reads take &self and writes &mut self, so
// moving it to another thread is as safe as moving a Vec.
unsafe impl<T> Send for MappedArray<T> {}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}
