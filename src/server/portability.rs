//! `mailroom export`, `import` and `migrate`: a store's records to a file, a file's
//! records into an empty store, and the embedded store into etcd in one step (see
//! [`crate::snapshot`] for what moves and how an import survives being cut short).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::store::{create_private_dir, open_store};
use crate::config::{Args, StoreKind};
use crate::crypto::MasterKey;
use crate::ports::StoreError;
use crate::snapshot::file::{self, Header, Reader, Writer};
use crate::snapshot::{secrets, Counts, Kind, Portable};
use crate::store::Store;

/// Records written to the store at once (one group commit on sled), and message records
/// (with their contents, up to 1.5 MiB each).
const CHUNK: usize = 1000;
const MESSAGE_CHUNK: usize = 16;
/// Bytes of records (as the file holds them) written to the store at once, at least one
/// record.
const CHUNK_BYTES: usize = 8 << 20;

/// `mailroom export --out FILE`: every record of the store the flags name, written to
/// `out` (in place only once whole). The embedded store must not be in use.
pub async fn export(args: &Args, out: &Path) -> anyhow::Result<Header> {
    if args.store == StoreKind::Sled && !args.data_dir.join("sled").is_dir() {
        anyhow::bail!(
            "no embedded store in {} (--data-dir): nothing to export",
            args.data_dir.display()
        );
    }
    let key = master_key_of(
        args,
        "the store exported (its secrets stay sealed under it, and it seals the file)",
    )?;
    let store = open(args, "mailroom export reads").await?;
    // A store an import left halfway is not a backup of anything: its counts would match
    // what it holds, and the file would import cleanly, partial.
    if let Some(mark) = store.import_mark().await? {
        return Err(crate::snapshot::interrupted(&mark).into());
    }
    let header = export_from(store.as_ref(), args.store, out, &key).await?;
    close(store).await?;
    Ok(header)
}

async fn export_from(
    store: &dyn Store,
    kind: StoreKind,
    out: &Path,
    key: &MasterKey,
) -> anyhow::Result<Header> {
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut writer = Writer::create(out)?;
    store
        .export(&mut |record| {
            writer
                .write(&record)
                .map_err(|e| StoreError::Unavailable(format!("writing the export: {e}")))
        })
        .await
        .context("reading the store")?;
    let header = writer.finish(store_name(kind), started, key)?;
    tracing::info!(
        file = %out.display(),
        records = %file::describe(&header.counts),
        "store exported"
    );
    Ok(header)
}

/// `mailroom import --from FILE`: the file's records into the store the flags name, which
/// must hold nothing (unless `replace`), once the master key opens every secret in the
/// file. Run again after a crash, it finishes what the first run began.
pub async fn import(args: &Args, from: &Path, replace: bool) -> anyhow::Result<Header> {
    let key = master_key_of(args, "the store the file was exported from")?;
    let checked = check_file(from, &key)?;
    let header = checked.header.clone();
    if args.store == StoreKind::Sled {
        create_private_dir(&args.data_dir)?;
    }
    let store = open(args, "mailroom import writes").await?;
    import_into(store.as_ref(), from, checked, &key, replace).await?;
    close(store).await?;
    tracing::info!(
        file = %from.display(),
        records = %file::describe(&header.counts),
        "store imported"
    );
    Ok(header)
}

/// The store the flags name; the embedded one's directory must not be in use.
async fn open(args: &Args, command: &str) -> anyhow::Result<Arc<dyn Store>> {
    let opened = open_store(args).await;
    match args.store {
        StoreKind::Sled => opened.with_context(|| {
            format!("{command} the embedded store with mailroom stopped: stop it first")
        }),
        StoreKind::Etcd => opened,
    }
}

/// The master key the flags name, which must exist: a key made now would open nothing.
/// `whose`: what it must be the key of, for the error.
fn master_key_of(args: &Args, whose: &str) -> anyhow::Result<MasterKey> {
    let path = args.master_key_path();
    if !path.exists() {
        anyhow::bail!(
            "no master key at {}: it must be the master key of {whose}; copy that key file \
             here (or name it with --master-key-file)",
            path.display()
        );
    }
    Ok(MasterKey::load_or_create(&path)?)
}

/// An export file checked whole, to be imported through the same handle.
struct Checked {
    file: File,
    header: Header,
    /// The SHA-256 of the whole file: what names the import under way.
    digest: String,
}

/// Reads the whole file before anything is written: every record must decode, the counts
/// match the header, `key` open every sealed value, and the records be those the header's
/// seal vouches for.
fn check_file(path: &Path, key: &MasterKey) -> anyhow::Result<Checked> {
    let mut reader = Reader::open(path)?;
    while let Some(record) = reader.next_record()? {
        if let Some(what) = secrets::unopened(&record, key) {
            anyhow::bail!(
                "the master key does not open {what} in {}: it is not the key of the store \
                 this was exported from (give that key with --master-key-file). Nothing was \
                 written",
                path.display()
            );
        }
    }
    if !reader.intact(key) {
        anyhow::bail!(
            "{} was changed after it was exported, or exported under another master key: \
             its records are not those its header's seal vouches for. Nothing was written",
            path.display()
        );
    }
    Ok(Checked {
        header: reader.header().clone(),
        digest: reader.file_digest(),
        file: reader.into_file(),
    })
}

/// Writes the file's records into `store`, under the import's mark, which is cleared only
/// once the records written are found to be those the header's seal vouches for: a file
/// changed in place while it was imported leaves the store marked, which no server opens.
async fn import_into(
    store: &dyn Store,
    from: &Path,
    checked: Checked,
    key: &MasterKey,
    replace: bool,
) -> anyhow::Result<()> {
    // One import at a time: two on one etcd prefix interleaved their writes, each clearing
    // the mark at its end over a store that was neither file. Let go however it ends.
    let lock = store.lock_import().await?;
    let imported = import_held(store, from, checked, key, replace).await;
    lock.release().await;
    imported
}

/// [`import_into`], the store held.
async fn import_held(
    store: &dyn Store,
    from: &Path,
    checked: Checked,
    key: &MasterKey,
    replace: bool,
) -> anyhow::Result<()> {
    let digest = checked.digest.as_str();
    match store.import_mark().await? {
        Some(mark) if mark == digest => {
            tracing::info!("finishing an import of this file that did not finish");
        }
        Some(mark) if !replace => {
            anyhow::bail!(
                "an import of another file (digest {mark}) into this store did not finish: \
                 run it again with that file, or use --replace to import this one instead"
            );
        }
        _ => {
            if !replace && store.holds_records().await? {
                anyhow::bail!(
                    "the store already holds records: import writes into an empty store \
                     (--replace removes what it holds first)"
                );
            }
        }
    }
    store.set_import_mark(Some(digest)).await?;
    // Whatever a first run of this file, or the store before --replace, left: gone.
    store.remove_all().await?;
    let mut reader = Reader::over(checked.file, from)?;
    let mut chunk: Vec<Portable> = Vec::with_capacity(CHUNK);
    let mut chunk_bytes = 0;
    let mut written = 0;
    while let Some(record) = reader.next_record()? {
        let limit = if record.kind() == Kind::Message {
            MESSAGE_CHUNK
        } else {
            CHUNK
        };
        chunk.push(record);
        chunk_bytes += reader.last_bytes();
        // Bounded in bytes too: a crafted file of a thousand records of megabytes each
        // held gigabytes.
        if chunk.len() >= limit || chunk_bytes >= CHUNK_BYTES {
            store.restore(&chunk).await?;
            written += chunk.len();
            chunk.clear();
            chunk_bytes = 0;
            tracing::info!(records = written, "records imported so far");
        }
    }
    store.restore(&chunk).await?;
    store.flush().await?;
    if !reader.intact(key) {
        anyhow::bail!(
            "{} changed while it was imported: the records written are not those its header's \
             seal vouches for. The store stays marked as importing, and no server opens it: \
             import again, from a file no one else can write, with --replace",
            from.display()
        );
    }
    store.set_import_mark(None).await?;
    Ok(())
}

/// `mailroom migrate --to-store etcd`: the embedded store in `--data-dir` exported, then
/// imported into the etcd cluster the `--etcd-*` flags name, through a file in the data
/// directory (`migration.jsonl`, mode 0600, removed at the end, or when the import is
/// refused). Run again after a crash, it finishes the import from that file. What moved,
/// per kind.
pub async fn migrate(args: &Args, to: StoreKind, replace: bool) -> anyhow::Result<Counts> {
    if args.store != StoreKind::Sled || to != StoreKind::Etcd {
        anyhow::bail!(
            "mailroom migrate moves the embedded store (--store sled, the default) to etcd \
             (--to-store etcd)"
        );
    }
    let key = master_key_of(args, "the embedded store")?;
    let file = args.data_dir.join("migration.jsonl");
    let target = Args {
        store: StoreKind::Etcd,
        ..args.clone()
    };
    let etcd = open_store(&target).await?;
    let resumable = match (etcd.import_mark().await?, file.is_file()) {
        (Some(mark), true) => {
            let mut opened =
                File::open(&file).with_context(|| format!("reading {}", file.display()))?;
            file::digest(&mut opened, &file)? == mark
        }
        _ => false,
    };
    if !resumable {
        // A file an earlier run left before its import began: exported again.
        if file.is_file() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        }
        export(args, &file).await?;
    }
    let checked = check_file(&file, &key)?;
    let (header, digest) = (checked.header.clone(), checked.digest.clone());
    let imported = import_into(etcd.as_ref(), &file, checked, &key, replace).await;
    // The file is a copy of the whole store: kept only while an import of it is under way
    // (a rerun finishes that one from it), never left by a refusal.
    let under_way = imported.is_err() && etcd.import_mark().await.ok().flatten() == Some(digest);
    if !under_way {
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    }
    imported?;
    Ok(header.counts)
}

fn store_name(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Sled => "sled",
        StoreKind::Etcd => "etcd",
    }
}

/// Lets go of the store: the embedded one's directory is released once it is closed.
async fn close(store: Arc<dyn Store>) -> anyhow::Result<()> {
    store.flush().await?;
    drop(store);
    Ok(())
}

/// What `mailroom export` says once it wrote `out`.
pub fn exported(out: &Path, header: &Header) -> String {
    format!(
        "mailroom export: wrote {} ({})\nIt holds the store's secrets sealed under the master \
         key, and the digests of its API keys and tokens: keep it as you keep the master key.",
        out.display(),
        file::describe(&header.counts)
    )
}

/// What `mailroom import` says once it read `from` into the store.
pub fn imported(from: &Path, header: &Header) -> String {
    format!(
        "mailroom import: read {} ({})",
        from.display(),
        file::describe(&header.counts)
    )
}

/// What `mailroom migrate` says it moved, per kind, and what to do next.
pub fn migrated(args: &Args, counts: &Counts) -> String {
    let mut report = format!(
        "mailroom migrate: moved the embedded store in {} to etcd at {} (prefix {}):\n",
        args.data_dir.display(),
        args.etcd_endpoints.join(","),
        args.etcd_prefix
    );
    for kind in Kind::ALL {
        let count = counts.get(&kind).copied().unwrap_or(0);
        report.push_str(&format!("  {:<15} {count}\n", kind.name()));
    }
    report.push_str(&format!(
        "Next: start the replicas with --store etcd, the same --etcd-* flags, and the same \
         master key ({}: copy it to each replica, --master-key-file); the API keys' secrets \
         (admin.key too) and pending tokens keep working. Keep {} stopped: it no longer \
         holds the current state.",
        args.master_key_path().display(),
        args.data_dir.display()
    ));
    report
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;
    use crate::directory::{User, UserStore};
    use crate::snapshot::Snapshot;
    use crate::store::sled::SledStore;

    fn user(login: &str) -> Portable {
        Portable::User(User {
            login: login.into(),
            name: "Ana".into(),
            email: String::new(),
            organisations: vec!["acme".into()],
            locked: false,
            locale: String::new(),
            create_time: std::time::UNIX_EPOCH,
            update_time: std::time::UNIX_EPOCH,
        })
    }

    /// An export of one user, `ana1`, under `key`.
    fn exported(path: &Path, key: &MasterKey) {
        let mut writer = Writer::create(path).unwrap();
        writer.write(&user("ana1")).unwrap();
        writer
            .finish("sled", "2026-12-01T00:00:00Z".into(), key)
            .unwrap();
    }

    /// What the review did: a file checked whole, then swapped for another (by rename) or
    /// changed in place before its records were read again to be written. The swapped
    /// file is never read (one handle); a change in place leaves the store marked.
    #[tokio::test]
    async fn a_file_changed_after_its_check_is_not_imported() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
        let path = dir.path().join("export.jsonl");
        let other = dir.path().join("other.jsonl");

        exported(&path, &key);
        let checked = check_file(&path, &key).unwrap();
        std::fs::write(&other, "not an export\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let store = SledStore::open(&dir.path().join("a"), 16 << 20).unwrap();
        import_into(&store, &path, checked, &key, false)
            .await
            .unwrap();
        assert!(
            store.user("ana1").await.unwrap().is_some(),
            "the file checked"
        );
        assert_eq!(store.import_mark().await.unwrap(), None);

        exported(&path.with_extension("2"), &key);
        let path = path.with_extension("2");
        let checked = check_file(&path, &key).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text.find("ana1").unwrap();
        let mut same = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        same.seek(SeekFrom::Start(at as u64)).unwrap();
        same.write_all(b"eve1").unwrap();
        drop(same);
        let store = SledStore::open(&dir.path().join("b"), 16 << 20).unwrap();
        let refused = import_into(&store, &path, checked, &key, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("changed while it was imported"),
            "{refused}"
        );
        assert!(
            store.import_mark().await.unwrap().is_some(),
            "the store stays marked: no server opens it"
        );
    }
}
