//! The file store's bytes in the database (Postgres; table `file_blobs`,
//! migration 4), so every master sharing the database serves every file.
//!
//! An upload is written as chunks of at most [`CHUNK_BYTES`] under a fresh
//! blob id, one statement per chunk (no transaction held open for the whole
//! upload); [`Store::commit_blob`] then points the `files` row at the blob
//! and drops the previous blob's chunks in one transaction, so a reader
//! sees the old file or the new one, never half of one. A blob no row names
//! (an upload that failed, or a master that died mid-upload) is removed by
//! the failed upload itself or later by [`Store::prune_orphan_blobs`].
//!
//! SQLite serves one master, which keeps the bytes on its disk; these
//! functions are used on Postgres only.

use sqlx::Row;

use crate::store::{now_ms, Backend, FileRow, Store, StoreError};

/// The largest chunk of a blob.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// The class key of the per-path advisory lock ("dadd"); the second key is
/// the path's hash. Two-key advisory locks never meet the one-key locks of
/// dispatch and retention.
const FILE_LOCK_CLASS: i32 = 0x6461_6464;

/// How [`Store::commit_blob`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The row names the new blob; the previous blob is gone.
    Stored,
    /// Another file's path clashes with this one (a parent of it is a file,
    /// or it is a parent of files): the named path.
    Clash(String),
    /// The blob lacks chunks (pruned under a stalled upload): how many
    /// were found.
    Incomplete {
        /// Chunks found.
        found: i64,
    },
}

impl Store {
    /// One file's record and the blob holding its bytes (None: the bytes
    /// are on a master's disk).
    pub async fn file_blob(
        &self,
        path: &str,
    ) -> Result<Option<(FileRow, Option<String>)>, StoreError> {
        let row =
            sqlx::query("SELECT path, size, sha256, modified, blob FROM files WHERE path = $1")
                .bind(path)
                .fetch_optional(&self.read)
                .await?;
        row.map(|r| {
            Ok((
                FileRow {
                    path: r.try_get(0)?,
                    size: r.try_get(1)?,
                    sha256: r.try_get(2)?,
                    modified: r.try_get(3)?,
                },
                r.try_get(4)?,
            ))
        })
        .transpose()
    }

    /// Stores chunk `seq` (from 0) of a blob being uploaded.
    pub async fn put_blob_chunk(
        &self,
        blob: &str,
        seq: i64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO file_blobs (blob, seq, data, created_at) VALUES ($1, $2, $3, $4)")
            .bind(blob)
            .bind(seq)
            .bind(data)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The path of another file that clashes with `path` in a directory
    /// tree (a parent of `path` that is a file, or a file under `path`).
    pub async fn file_path_clash(&self, path: &str) -> Result<Option<String>, StoreError> {
        clash(&self.read, path).await
    }

    /// Points the file's row at `blob` (written as `chunks` chunks) and
    /// drops the previous blob, in one transaction; uploads and deletes of
    /// one path take turns (an advisory lock on the path). Leaves the blob
    /// in place unless `Stored`: the caller drops it.
    pub async fn commit_blob(
        &self,
        f: &FileRow,
        blob: &str,
        chunks: i64,
    ) -> Result<Committed, StoreError> {
        let mut tx = self.write.begin().await?;
        lock_path(&mut tx, &f.path).await?;
        let found: i64 = sqlx::query("SELECT COUNT(*) FROM file_blobs WHERE blob = $1")
            .bind(blob)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if found != chunks {
            tx.rollback().await?;
            return Ok(Committed::Incomplete { found });
        }
        if let Some(other) = clash(&mut *tx, &f.path).await? {
            tx.rollback().await?;
            return Ok(Committed::Clash(other));
        }
        let old: Option<String> = sqlx::query("SELECT blob FROM files WHERE path = $1")
            .bind(&f.path)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten();
        sqlx::query(
            "INSERT INTO files (path, size, sha256, modified, blob) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, \
             modified = excluded.modified, blob = excluded.blob",
        )
        .bind(&f.path)
        .bind(f.size)
        .bind(&f.sha256)
        .bind(f.modified)
        .bind(blob)
        .execute(&mut *tx)
        .await?;
        if let Some(old) = old.filter(|o| o != blob) {
            sqlx::query("DELETE FROM file_blobs WHERE blob = $1")
                .bind(old)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Committed::Stored)
    }

    /// Deletes a blob's chunks (a failed upload's); returns how many went.
    pub async fn drop_blob(&self, blob: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM file_blobs WHERE blob = $1")
            .bind(blob)
            .execute(&self.write)
            .await?
            .rows_affected())
    }

    /// Up to `limit` chunks of a blob from chunk `from`, in order.
    pub async fn blob_chunks(
        &self,
        blob: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, data FROM file_blobs WHERE blob = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
        )
        .bind(blob)
        .bind(from)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Forgets a file and deletes its blob, in one transaction; false when
    /// there was no such file.
    pub async fn delete_file_blob(&self, path: &str) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        lock_path(&mut tx, path).await?;
        let Some(row) = sqlx::query("DELETE FROM files WHERE path = $1 RETURNING blob")
            .bind(path)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        if let Some(blob) = row.try_get::<Option<String>, _>(0)? {
            sqlx::query("DELETE FROM file_blobs WHERE blob = $1")
                .bind(blob)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes the chunks of up to `batch` blobs that no file names and
    /// that got no chunk since `cutoff_ms`: uploads that failed without
    /// cleaning up (a master died mid-upload). Give a cutoff well in the
    /// past (an hour): an upload in progress is a blob no file names yet.
    /// Returns how many chunks went; 0 on SQLite (no blobs there).
    pub async fn prune_orphan_blobs(
        &self,
        cutoff_ms: i64,
        batch: i64,
    ) -> Result<usize, StoreError> {
        if self.backend() != Backend::Postgres {
            return Ok(0);
        }
        let n = sqlx::query(
            "DELETE FROM file_blobs WHERE blob IN (SELECT b.blob FROM file_blobs b \
             WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.blob = b.blob) \
             GROUP BY b.blob HAVING MAX(b.created_at) < $1 LIMIT $2) \
             AND NOT EXISTS (SELECT 1 FROM files f WHERE f.blob = file_blobs.blob)",
        )
        .bind(cutoff_ms)
        .bind(batch)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Takes the transaction-level advisory lock of one path.
async fn lock_path(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    path: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(FILE_LOCK_CLASS)
        .bind(path)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn clash<'e, E>(db: E, path: &str) -> Result<Option<String>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    // Parents of `path` that are files, or files below `path`.
    let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
    let mut sql =
        String::from("SELECT path FROM files WHERE substr(path, 1, char_length($1)) = $1");
    for i in 0..parents.len() {
        sql.push_str(&format!(" OR path = ${}", i + 2));
    }
    sql.push_str(" LIMIT 1");
    let mut q = sqlx::query(&sql).bind(format!("{path}/"));
    for p in parents {
        q = q.bind(p);
    }
    let row = q.fetch_optional(db).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}
