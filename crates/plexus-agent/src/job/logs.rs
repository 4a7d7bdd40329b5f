//! Instance output files: `<dir>/<task>.stdout.log` and `.stderr.log`, rotated when a process
//! starts and the file has grown past [`MAX_LOG_BYTES`] (the old one becomes `.log.1`, replacing
//! the previous `.1`).

use std::fs::File;
use std::path::{Path, PathBuf};

/// A log file larger than this is rotated at the next start.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// The two files a process writes to (appending), after rotating them if large.
pub(super) fn open(dir: &Path, task: &str) -> std::io::Result<(File, File)> {
    std::fs::create_dir_all(dir)?;
    let out = open_one(&dir.join(format!("{task}.stdout.log")))?;
    let err = open_one(&dir.join(format!("{task}.stderr.log")))?;
    Ok((out, err))
}

fn open_one(path: &PathBuf) -> std::io::Result<File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let mut old = path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    File::options().create(true).append(true).open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn large_files_are_rotated_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (out, _) = open(dir.path(), "app").unwrap();
        out.set_len(MAX_LOG_BYTES + 1).unwrap();
        drop(out);
        let (out, _) = open(dir.path(), "app").unwrap();
        assert_eq!(out.metadata().unwrap().len(), 0);
        let rotated = dir.path().join("app.stdout.log.1");
        assert_eq!(std::fs::metadata(rotated).unwrap().len(), MAX_LOG_BYTES + 1);
    }
}
