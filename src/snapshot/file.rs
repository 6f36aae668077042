//! The export file: JSON lines. The first line is the [`Header`] (format, its version,
//! the mailroom version that wrote it, the kind of store it came from, when, and how many
//! records of each kind follow); then one [`Portable`] per line, `{"kind": ..., "record":
//! ...}`, kind by kind. Self-describing (field names, not postcard's positions): a record
//! type's new field needs `#[serde(default)]` (or the file format's version bumped) for
//! files written before it to import.
//!
//! [`Writer`] writes the records to a temporary file beside the destination while it
//! counts them, then the header and the records to another, synced and renamed over the
//! destination: the file is either whole or absent. Both are readable by their owner only.
//! [`Reader`] reads a line at a time, each at most [`MAX_LINE`] bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Counts, Portable};

/// What the header's `format` says.
pub const FORMAT: &str = "mailroom-export";
/// The version of the format this mailroom writes, and the newest it reads.
pub const VERSION: u32 = 1;
/// The longest line read: a message near the size limit, sealed and in base64, is far
/// shorter.
pub const MAX_LINE: u64 = 64 << 20;

/// The first line of the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written.
    pub version: u32,
    /// The mailroom version that wrote it.
    pub mailroom: String,
    /// The kind of store it was exported from (`sled`, `etcd`).
    pub source: String,
    /// When the export began (RFC 3339).
    pub exported_at: String,
    /// How many records of each kind follow.
    pub counts: Counts,
    /// The SHA-256 digest of the records (every line after this one), sealed with the
    /// master key ([`INTEGRITY_PURPOSE`]): a file changed after it was exported (an API key
    /// added, a token's owner swapped) does not import, whoever can write the file.
    pub integrity: Option<crate::crypto::Sealed>,
}

/// The purpose [`Header::integrity`] is sealed for.
pub const INTEGRITY_PURPOSE: &str = "export.records";

/// A failure to write or read the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be written or read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why (said in this error's text, not as its source: it would be said twice).
        error: std::io::Error,
    },
    /// The file is not an export this version reads.
    #[error("{path}, line {line}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// The line (1: the header).
        line: u64,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
    move |error| FileError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Writes an export file.
pub struct Writer {
    path: PathBuf,
    records: BufWriter<tempfile::NamedTempFile>,
    counts: Counts,
    /// Over the records as written.
    digest: Sha256,
}

impl Writer {
    /// Starts the file `path` (nothing is there until [`Writer::finish`]).
    pub fn create(path: &Path) -> Result<Self, FileError> {
        // Never over a file: `--out` naming master.key (or an earlier backup) would lose it.
        if path.exists() {
            return Err(io(path)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists: an export never replaces a file (name a new one)",
            )));
        }
        let records = tempfile::NamedTempFile::new_in(directory_of(path)).map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            records: BufWriter::new(records),
            counts: BTreeMap::new(),
            digest: Sha256::new(),
        })
    }

    /// Adds a record.
    pub fn write(&mut self, record: &Portable) -> Result<(), FileError> {
        let mut line = serde_json::to_vec(record)
            .map_err(std::io::Error::from)
            .map_err(io(&self.path))?;
        line.push(b'\n');
        self.digest.update(&line);
        self.records.write_all(&line).map_err(io(&self.path))?;
        *self.counts.entry(record.kind()).or_default() += 1;
        Ok(())
    }

    /// Writes the header (the records' digest sealed with `key`), then the records, and
    /// puts the file in place, durably.
    pub fn finish(
        self,
        source: &str,
        exported_at: String,
        key: &crate::crypto::MasterKey,
    ) -> Result<Header, FileError> {
        let path = self.path.clone();
        let integrity = key.seal(INTEGRITY_PURPOSE, &hex::encode(self.digest.finalize()));
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            mailroom: env!("CARGO_PKG_VERSION").into(),
            source: source.into(),
            exported_at,
            counts: self.counts,
            integrity: Some(integrity),
        };
        let mut records = self
            .records
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io(&path))?;
        let write = |records: &mut tempfile::NamedTempFile| -> std::io::Result<()> {
            records.rewind()?;
            let mut out = BufWriter::new(tempfile::NamedTempFile::new_in(directory_of(&path))?);
            serde_json::to_writer(&mut out, &header)?;
            out.write_all(b"\n")?;
            std::io::copy(records, &mut out)?;
            let out = out.into_inner().map_err(|e| e.into_error())?;
            out.as_file().sync_all()?;
            out.persist_noclobber(&path).map_err(|e| e.error)?;
            crate::crypto::sync_directory(directory_of(&path))
        };
        write(&mut records).map_err(io(&path))?;
        Ok(header)
    }
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Reads an export file, a record at a time.
pub struct Reader {
    path: PathBuf,
    lines: BufReader<File>,
    line: u64,
    header: Header,
    counts: Counts,
    /// The length of the last line read.
    last_bytes: usize,
    /// Over the records read, as [`Writer`] made it.
    digest: Sha256,
    /// Over every byte read, the header's line too ([`Reader::file_digest`]).
    whole: Sha256,
}

impl Reader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        Self::over(File::open(path).map_err(io(path))?, path)
    }

    /// Reads `file` (opened from `path`) from its start: its header first.
    pub fn over(mut file: File, path: &Path) -> Result<Self, FileError> {
        file.rewind().map_err(io(path))?;
        let mut reader = Self {
            path: path.to_path_buf(),
            lines: BufReader::new(file),
            line: 0,
            last_bytes: 0,
            header: Header {
                format: String::new(),
                version: 0,
                mailroom: String::new(),
                source: String::new(),
                exported_at: String::new(),
                counts: Counts::new(),
                integrity: None,
            },
            counts: Counts::new(),
            digest: Sha256::new(),
            whole: Sha256::new(),
        };
        let Some(line) = reader.next_line()? else {
            return Err(reader.bad("empty: not a mailroom export".into()));
        };
        let header: Header = serde_json::from_slice(&line)
            .map_err(|e| reader.bad(format!("not a mailroom export header: {e}")))?;
        if header.format != FORMAT {
            return Err(reader.bad(format!("format {:?} is not {FORMAT:?}", header.format)));
        }
        if header.version > VERSION {
            return Err(reader.bad(format!(
                "format version {} was written by mailroom {}; this mailroom {} reads \
                 version {VERSION} at most",
                header.version,
                header.mailroom,
                env!("CARGO_PKG_VERSION")
            )));
        }
        reader.header = header;
        Ok(reader)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The SHA-256 of the file, in hex, once read to its end ([`digest`]'s, without a
    /// second read).
    pub fn file_digest(&self) -> String {
        hex::encode(self.whole.clone().finalize())
    }

    /// The file read, to be read again through the same handle: a file put in its path's
    /// place meanwhile is not read.
    pub fn into_file(self) -> File {
        self.lines.into_inner()
    }

    /// Whether the records read (all of them, once [`Reader::next_record`] answered
    /// `None`) are those the header's digest was sealed over, with `key`: false for a file
    /// changed after its export, or exported under another master key.
    pub fn intact(&self, key: &crate::crypto::MasterKey) -> bool {
        let Some(sealed) = &self.header.integrity else {
            return false;
        };
        let digest = hex::encode(self.digest.clone().finalize());
        key.open(INTEGRITY_PURPOSE, sealed)
            .is_ok_and(|expected| secrecy::ExposeSecret::expose_secret(&expected) == digest)
    }

    /// The next record; `None` at the end, once the records read are checked against the
    /// header's counts (a file cut short is refused there).
    pub fn next_record(&mut self) -> Result<Option<Portable>, FileError> {
        let Some(line) = self.next_line()? else {
            if self.counts != self.header.counts {
                return Err(self.bad(format!(
                    "the file ends with {} where its header announces {}: it is incomplete",
                    describe(&self.counts),
                    describe(&self.header.counts)
                )));
            }
            return Ok(None);
        };
        self.digest.update(&line);
        self.digest.update(b"\n");
        let record: Portable =
            serde_json::from_slice(&line).map_err(|e| self.bad(format!("not a record: {e}")))?;
        let count = self.counts.entry(record.kind()).or_default();
        *count += 1;
        if *count > self.header.counts.get(&record.kind()).copied().unwrap_or(0) {
            return Err(self.bad(format!(
                "more {} records than the header announces",
                record.kind().name()
            )));
        }
        Ok(Some(record))
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>, FileError> {
        let mut line = Vec::new();
        let read = (&mut self.lines)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(io(&self.path))?;
        if read == 0 {
            return Ok(None);
        }
        self.line += 1;
        if line.last() != Some(&b'\n') {
            return Err(self.bad(if read as u64 > MAX_LINE {
                format!("a line longer than {MAX_LINE} bytes")
            } else {
                "the last line is cut short: the file is incomplete".into()
            }));
        }
        self.whole.update(&line);
        line.pop();
        self.last_bytes = line.len();
        Ok(Some(line))
    }

    /// The length of the last record read, as the file holds it.
    pub fn last_bytes(&self) -> usize {
        self.last_bytes
    }

    fn bad(&self, reason: String) -> FileError {
        FileError::Format {
            path: self.path.display().to_string(),
            line: self.line,
            reason,
        }
    }
}

/// `3 api_key, 1 settings, ...`.
pub fn describe(counts: &Counts) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| format!("{n} {}", kind.name()))
        .collect();
    if parts.is_empty() {
        "no record".into()
    } else {
        parts.join(", ")
    }
}

/// The SHA-256 of `file` (opened from `path`), in hex, read from its start: what names an
/// import under way.
pub fn digest(file: &mut File, path: &Path) -> Result<String, FileError> {
    file.rewind().map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Sealed;

    #[test]
    fn a_file_reads_back_and_a_file_cut_short_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.jsonl");
        let mut writer = Writer::create(&path).unwrap();
        assert!(!path.exists(), "nothing is in place before the end");
        writer
            .write(&Portable::KeyCheck(Sealed::from_stored("c2VhbGVk".into())))
            .unwrap();
        let key = crate::crypto::MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
        let header = writer
            .finish("sled", "2026-12-01T00:00:00Z".into(), &key)
            .unwrap();
        assert_eq!(header.counts.values().sum::<u64>(), 1);
        let mut reader = Reader::open(&path).unwrap();
        assert_eq!(reader.header(), &header);
        assert!(matches!(
            reader.next_record().unwrap(),
            Some(Portable::KeyCheck(_))
        ));
        assert!(reader.next_record().unwrap().is_none());
        assert!(reader.intact(&key));
        let mut again = File::open(&path).unwrap();
        assert_eq!(
            reader.file_digest(),
            digest(&mut again, &path).unwrap(),
            "the digest taken while reading is the file's"
        );
        let other =
            crate::crypto::MasterKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(!reader.intact(&other), "another key does not vouch for it");

        // A record changed after the export: read, but not intact.
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = text.replace("c2VhbGVk", "c2VhbGVl");
        std::fs::write(&path, &changed).unwrap();
        let mut reader = Reader::open(&path).unwrap();
        while reader.next_record().unwrap().is_some() {}
        assert!(!reader.intact(&key), "a changed record is noticed");
        std::fs::write(&path, &text).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let header_only = text.lines().next().unwrap().to_string() + "\n";
        std::fs::write(&path, header_only).unwrap();
        let mut reader = Reader::open(&path).unwrap();
        let err = reader.next_record().unwrap_err().to_string();
        assert!(err.contains("incomplete"), "{err}");
    }
}
