//! Walking picture folders: which files are pictures, with their size and modification time,
//! and the key of their path (hashed here once; the capture, the encoder and the index carry
//! it along).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::index::picture_key;

/// A picture file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSeen {
    /// Its path.
    pub path: PathBuf,
    /// [`picture_key`] of its path.
    pub key: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch (0 before it or unknown).
    pub mtime_ns: i64,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Picture files, sorted by path.
    pub files: Vec<FileSeen>,
    /// Files that look like pictures or videos edgeclip cannot read (HEIC, RAW, video).
    pub unsupported: Vec<FileSeen>,
    /// Folders or entries that could not be read, one line each.
    pub problems: Vec<String>,
}

/// Extensions of camera files edgeclip cannot decode, reported instead of silently ignored.
pub const UNSUPPORTED: &[&str] = &[
    "heic", "heif", "avif", "jxl", "dng", "cr2", "cr3", "nef", "arw", "orf", "rw2", "raf", "mp4",
    "mov", "avi", "mkv", "3gp",
];

/// Walks `folders` recursively (not following symbolic links, so loops cannot trap it) and
/// lists the regular files whose extension is in `extensions` (lower case, no dot), and
/// those with an [`UNSUPPORTED`] extension apart.
pub fn scan_folders(folders: &[PathBuf], extensions: &[String]) -> Scan {
    let mut scan = Scan::default();
    for folder in folders {
        if !folder.is_dir() {
            scan.problems
                .push(format!("{} is not a folder", folder.display()));
            continue;
        }
        for item in walkdir::WalkDir::new(folder).follow_links(false) {
            let entry = match item {
                Ok(e) => e,
                Err(e) => {
                    scan.problems.push(e.to_string());
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let supported = has_extension(entry.path(), extensions);
            let unsupported = !supported
                && UNSUPPORTED
                    .iter()
                    .any(|u| has_extension(entry.path(), &[u.to_string()]));
            if !supported && !unsupported {
                continue;
            }
            let list = if supported {
                &mut scan.files
            } else {
                &mut scan.unsupported
            };
            match entry.metadata() {
                Ok(meta) => list.push(FileSeen {
                    path: entry.path().to_path_buf(),
                    key: picture_key(entry.path()),
                    size: meta.len(),
                    mtime_ns: meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                        .unwrap_or(0),
                }),
                Err(e) => scan
                    .problems
                    .push(format!("{}: {e}", entry.path().display())),
            }
        }
    }
    scan.files.sort_by(|a, b| a.path.cmp(&b.path));
    scan.files.dedup_by(|a, b| a.path == b.path);
    scan
}

fn has_extension(path: &Path, extensions: &[String]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pictures_recursively_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/one.JPG"), b"x").unwrap();
        std::fs::write(dir.path().join("a/b/two.png"), b"xy").unwrap();
        std::fs::write(dir.path().join("a/notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("a/clip.MOV"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("c.jpg")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path(), dir.path().join("a/loop")).unwrap();
        let exts = vec!["jpg".to_string(), "png".to_string()];
        let scan = scan_folders(
            &[dir.path().to_path_buf(), dir.path().join("missing")],
            &exts,
        );
        let names: Vec<_> = scan
            .files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            vec!["two.png", "one.JPG"],
            "sorted by path: a/b/two.png < a/one.JPG"
        );
        assert_eq!(scan.files[0].size, 2);
        assert_eq!(scan.files[0].key, picture_key(&scan.files[0].path));
        assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
        assert_eq!(scan.unsupported.len(), 1);
        assert!(scan.unsupported[0].path.ends_with("clip.MOV"));
    }
}
