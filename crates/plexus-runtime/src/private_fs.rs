//! Files only this user may read: data directories are created `0700` and the files Plexus
//! writes in them `0600`, since they hold secrets (the CA's keys, unless wrapped; tokens).
//!
//! Existing paths: a file Plexus owns (the store file) is tightened to `0600`; an existing
//! directory is left as it is (it may be shared, like `/tmp`) and a warning names it when
//! group or others may enter it.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tracing::{info, warn};

/// Mode of the directories Plexus creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files Plexus writes.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode `0700`. An existing directory is kept as it
/// is; when group or others have any access to it, a warning says so.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                path = %dir.display(),
                mode = %format!("{mode:o}"),
                "the data directory is accessible to other users; `chmod 700` it (Plexus leaves existing directories as they are)"
            );
        }
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Makes sure `file` exists with mode `0600`: creates it empty if missing, tightens it if it
/// is looser (saying so).
pub fn create_file(file: &Path) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(file)?;
    let mode = std::fs::metadata(file)?.permissions().mode() & 0o777;
    if mode != FILE_MODE {
        std::fs::set_permissions(file, Permissions::from_mode(FILE_MODE))?;
        info!(path = %file.display(), was = %format!("{mode:o}"), "tightened the file's mode to 600");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_loose_files_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        let file = dir.join("store");
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::write(&file, b"kept").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"kept");
        // An existing, looser directory is left alone.
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o755);
    }
}
