//! Opening the embedded store's file safely: what is checked before anything is served.
//!
//! - **An existing data directory is never replaced silently.** A data file of zero bytes, or a
//!   data directory holding other files but no data file, is refused: both look like lost data,
//!   and a fresh store there would also mean a fresh CA (every certificate in the mesh orphaned).
//! - **A new store appears atomically**: it is created under a temporary name and renamed into
//!   place once initialised, so a crash during creation never leaves an empty data file behind.
//! - **A damaged file is detected at open**, not at the first read: redb's own checks (page
//!   checksums, with a roll-back to the previous commit after a torn write) run first, then every
//!   record is read back and decoded. Any failure, and any panic inside redb while doing so,
//!   becomes [`IntegrityError`] naming the file and what to do; nothing is served from it.
//!
//! A check that redb *repaired* (a torn last commit, as after `kill -9` mid-write) is logged and
//! the store opens: that is the crash recovery redb is built for.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;

use redb::{Database, ReadableTable, TableDefinition};

/// What an operator should do with a damaged data file (shown in the exit message).
pub const RECOVERY_ADVICE: &str = "stop every process using it, move the data directory aside \
     (keep it for analysis), and restore the last backup with `plexus operator restore FILE` \
     into a server started on an empty data directory (see docs/operations.md \"Recovering the \
     store\")";

/// Why the data file was refused at open.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The data file has no bytes: truncated, or never written.
    #[error(
        "data file {path} is empty (0 bytes): it was truncated or never written, and a new store \
         would silently replace what was there; if this directory never held data, delete the \
         file; otherwise {RECOVERY_ADVICE}"
    )]
    Empty {
        /// The data file.
        path: PathBuf,
    },
    /// The directory holds files but not the data file.
    #[error(
        "data directory {dir} is not empty but has no data file {file}: refusing to start a new \
         store over it; point --data-dir at an empty or new directory, or restore the data file"
    )]
    MissingFile {
        /// The data directory.
        dir: PathBuf,
        /// The expected file name.
        file: &'static str,
    },
    /// The file is damaged (truncated, bytes changed) or not a store at all.
    #[error("data file {path} is damaged ({reason}); {RECOVERY_ADVICE}")]
    Damaged {
        /// The data file.
        path: PathBuf,
        /// What the check found.
        reason: String,
    },
}

impl IntegrityError {
    fn damaged(path: &Path, reason: impl Into<String>) -> Self {
        Self::Damaged {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Refuses what looks like lost data: an empty data file, or a non-empty directory without one.
/// Returns whether the data file exists.
pub fn check_before_open(
    dir: &Path,
    path: &Path,
    file: &'static str,
) -> Result<bool, IntegrityError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => Err(IntegrityError::Empty {
            path: path.to_owned(),
        }),
        Ok(_) => Ok(true),
        Err(_) => {
            let others = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .any(|e| !is_leftover_of_creation(&e.file_name(), file))
                })
                .unwrap_or(false);
            if others {
                Err(IntegrityError::MissingFile {
                    dir: dir.to_owned(),
                    file,
                })
            } else {
                Ok(false)
            }
        }
    }
}

/// The temporary file of a creation that did not finish (removed and redone).
fn is_leftover_of_creation(name: &std::ffi::OsStr, file: &str) -> bool {
    name.to_str()
        .is_some_and(|n| n == creating_name(file).as_str())
}

/// The name a new data file is created under before it is renamed into place.
pub fn creating_name(file: &str) -> String {
    format!("{file}.creating")
}

thread_local! {
    /// Set while this thread runs code whose panics are caught and reported as errors.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, catching a panic (redb asserts on some damaged files) without the panic hook's
/// report on stderr: the caller reports it as an error. Panics on other threads are reported as
/// usual.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

/// Runs `f`, turning a panic inside redb into a [`IntegrityError::Damaged`].
pub fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, String>) -> Result<T, IntegrityError> {
    match catch_quietly(f) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(reason)) => Err(IntegrityError::damaged(path, reason)),
        Err(panic) => Err(IntegrityError::damaged(
            path,
            format!("reading it failed: {}", panic_message(&*panic)),
        )),
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_owned()
    }
}

/// redb's full check (page checksums; a torn last commit is rolled back), then a read of every
/// record of `kv` through `decode`.
pub fn verify(
    db: &mut Database,
    path: &Path,
    kv: TableDefinition<&str, &[u8]>,
    decode: impl Fn(&str, &[u8]) -> bool,
) -> Result<(), IntegrityError> {
    let clean = guarded(path, || {
        db.check_integrity()
            .map_err(|e| format!("integrity check failed: {e}"))
    })?;
    if !clean {
        tracing::warn!(path = %path.display(), "store file repaired at open: the last, torn commit was rolled back");
    }
    guarded(path, || {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let table = match tx.open_table(kv) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(format!("cannot open table kv: {e}")),
        };
        for entry in table.iter().map_err(|e| e.to_string())? {
            let (key, record) = entry.map_err(|e| format!("reading a record failed: {e}"))?;
            if !decode(key.value(), record.value()) {
                return Err(format!("record {:?} is malformed", key.value()));
            }
        }
        Ok(())
    })
}
