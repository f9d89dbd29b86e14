//! The directory `peer serve` keeps replicas in. Every file a peer's request names is opened
//! relative to the directory's handle, never through a link: a name that is a symbolic link (even
//! a dangling one), a file with more than one hard link, or anything but a regular file is refused
//! with an error that says so. Nothing outside the directory is ever created, read or resized.

use super::RegionError;
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// An open replica directory.
#[derive(Debug)]
pub struct ReplicaDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl ReplicaDir {
    /// Opens `path`, creating it (and its parents) if missing.
    pub fn open(path: &Path) -> Result<Self, RegionError> {
        let not_dir = || RegionError::Refused {
            path: path.to_owned(),
            reason: "is not a directory".into(),
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_dir() => return Err(not_dir()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(path)
                .map_err(|source| RegionError::Io {
                    path: path.to_owned(),
                    source,
                })?,
            Err(source) => {
                return Err(RegionError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => not_dir(),
            e => RegionError::Io {
                path: path.to_owned(),
                source: e.into(),
            },
        })?;
        Ok(ReplicaDir {
            path: path.to_owned(),
            fd,
        })
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `name` is, for messages.
    pub fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// fsync(2) of the directory: the names created in it so far survive a crash.
    pub fn sync(&self) -> Result<(), RegionError> {
        rustix::fs::fsync(&self.fd).map_err(|e| RegionError::Io {
            path: self.path.clone(),
            source: e.into(),
        })
    }

    /// Opens replica `name` for writing, creating it if missing.
    pub fn create(&self, name: &str) -> Result<File, RegionError> {
        self.openat(name, OFlags::RDWR | OFlags::CREATE)?
            .ok_or_else(|| gone(&self.display(name)))
    }

    /// Renames `from` to `to` in the directory, replacing `to` (rename(2) is atomic: a crash
    /// leaves one or the other).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), RegionError> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|e| RegionError::Io {
            path: self.display(to),
            source: e.into(),
        })
    }

    /// Opens `name` for reading and writing; `None` if there is none.
    pub fn open_existing_rw(&self, name: &str) -> Result<Option<File>, RegionError> {
        self.openat(name, OFlags::RDWR)
    }

    /// Opens replica `name` for reading; `None` if there is none.
    pub fn open_existing(&self, name: &str) -> Result<Option<File>, RegionError> {
        self.openat(name, OFlags::RDONLY)
    }

    fn openat(&self, name: &str, flags: OFlags) -> Result<Option<File>, RegionError> {
        let path = self.display(name);
        let refuse = |reason: &str| RegionError::Refused {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(refuse("is not a plain file name"));
        }
        // NOFOLLOW refuses a link as the last (only) component; NONBLOCK keeps a FIFO from
        // blocking the open until it is refused below (on a regular file it has no effect).
        let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::ISDIR) => return Err(refuse("is a directory, not a regular file")),
            Err(Errno::LOOP) => {
                return Err(refuse(
                    "is a symbolic link; replicas are never read or written through links",
                ))
            }
            Err(e) => {
                return Err(RegionError::Io {
                    path,
                    source: e.into(),
                })
            }
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| RegionError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(refuse(&format!(
                "is a {}, not a regular file",
                file_type_name(kind)
            )));
        }
        if st.st_nlink > 1 {
            return Err(refuse(&format!(
                "has {} hard links; a replica must be its only name, so no file elsewhere is changed with it",
                st.st_nlink
            )));
        }
        Ok(Some(File::from(fd)))
    }
}

/// O_CREAT found no directory to create in: it was removed while serving.
fn gone(path: &Path) -> RegionError {
    RegionError::Io {
        path: path.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

/// What a file type is called in messages.
pub fn file_type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<impl std::fmt::Debug, RegionError>) -> String {
        match r {
            Err(e @ RegionError::Refused { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn links_and_special_files_are_refused_and_nothing_outside_changes() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        let dir = ReplicaDir::open(&root.path().join("rep")).unwrap();
        let p = |n: &str| dir.display(n);
        std::os::unix::fs::symlink(&outside, p("link")).unwrap();
        std::os::unix::fs::symlink(root.path().join("nowhere"), p("dangling")).unwrap();
        std::fs::hard_link(&outside, p("hard")).unwrap();
        std::fs::create_dir(p("sub")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for name in ["link", "dangling", "hard", "sub", "fifo"] {
            let e = refused(dir.create(name));
            assert!(e.contains(name), "{e}");
            refused(dir.open_existing(name));
        }
        assert!(refused(dir.create("link")).contains("symbolic link"));
        assert!(refused(dir.create("hard")).contains("hard links"));
        assert!(refused(dir.create("fifo")).contains("FIFO"));
        assert!(!root.path().join("nowhere").exists());
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        assert!(dir.open_existing("new").unwrap().is_none());
        dir.create("new").unwrap();
        assert!(dir.open_existing("new").unwrap().is_some());
    }

    #[test]
    fn a_file_as_the_directory_is_named_not_a_directory() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = ReplicaDir::open(f.path()).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
    }
}
