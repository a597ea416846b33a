//! A project directory as the request names it (`Mcp-Project-Path`, `--project`,
//! `CLAUDE_PROJECT_DIR`), parsed once at the edge into a [`ProjectPath`]: absolute,
//! existing, canonical. Everything past the edge trusts it.

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode;

/// A project directory: absolute, existing, canonical (symlinks and trailing slashes
/// resolved), so that every spelling of one directory selects the same store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectPath(PathBuf);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectPathError {
    #[error("Mcp-Project-Path is empty")]
    Empty,
    #[error("Mcp-Project-Path is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    #[error("Mcp-Project-Path contains a NUL byte")]
    Nul,
    #[error("Mcp-Project-Path must be an absolute path, got {0:?}")]
    Relative(String),
    #[error("Mcp-Project-Path {0:?} does not exist or is not accessible ({1})")]
    Missing(String, String),
    #[error("Mcp-Project-Path {0:?} is not a directory")]
    NotADirectory(String),
}

impl ProjectPath {
    /// Parses a header value: percent-decoded as UTF-8 when it holds `%XX` sequences,
    /// otherwise taken as is.
    pub fn from_header(raw: &[u8]) -> Result<ProjectPath, ProjectPathError> {
        let text = String::from_utf8(percent_decoded(raw)).map_err(|_| ProjectPathError::NotUtf8)?;
        Self::from_dir(&text)
    }

    /// Validates a directory given as text (header, `--project`).
    pub fn from_dir(text: &str) -> Result<ProjectPath, ProjectPathError> {
        if text.is_empty() {
            return Err(ProjectPathError::Empty);
        }
        if text.contains('\0') {
            return Err(ProjectPathError::Nul);
        }
        let path = Path::new(text);
        if !path.is_absolute() {
            return Err(ProjectPathError::Relative(text.to_owned()));
        }
        let canonical =
            std::fs::canonicalize(path).map_err(|e| ProjectPathError::Missing(text.to_owned(), e.to_string()))?;
        if !canonical.is_dir() {
            return Err(ProjectPathError::NotADirectory(text.to_owned()));
        }
        Ok(ProjectPath(canonical))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// A header value percent-decoded when it holds `%XX` sequences, otherwise as is: the
/// proxy encodes project headers, other clients may send them raw.
pub fn percent_decoded(raw: &[u8]) -> Vec<u8> {
    if has_percent_escape(raw) { percent_decode(raw).collect() } else { raw.to_vec() }
}

fn has_percent_escape(raw: &[u8]) -> bool {
    raw.windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_spellings_of_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("proj");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let a = ProjectPath::from_dir(real.to_str().unwrap()).unwrap();
        let b = ProjectPath::from_dir(&format!("{}/", real.display())).unwrap();
        let c = ProjectPath::from_dir(link.to_str().unwrap()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn decodes_percent_encoded_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("工藤 app");
        std::fs::create_dir(&real).unwrap();
        let encoded: String =
            percent_encoding::utf8_percent_encode(real.to_str().unwrap(), percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let p = ProjectPath::from_header(encoded.as_bytes()).unwrap();
        assert_eq!(p.as_path(), std::fs::canonicalize(&real).unwrap());
    }

    #[test]
    fn rejects_bad_values_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(ProjectPath::from_header(b""), Err(ProjectPathError::Empty));
        assert!(matches!(ProjectPath::from_header(b"rel/dir"), Err(ProjectPathError::Relative(_))));
        assert!(matches!(ProjectPath::from_header(b"/no/such/dir/x"), Err(ProjectPathError::Missing(..))));
        assert!(matches!(
            ProjectPath::from_header(file.to_str().unwrap().as_bytes()),
            Err(ProjectPathError::NotADirectory(_))
        ));
        assert_eq!(ProjectPath::from_header(b"/tmp%00x"), Err(ProjectPathError::Nul));
        assert_eq!(ProjectPath::from_header(b"/tmp/%ff%fe"), Err(ProjectPathError::NotUtf8));
    }
}
