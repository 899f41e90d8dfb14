-- File bytes in the database, so every master serves every file. An upload
-- is written as chunks of at most 1 MiB under a fresh blob id, then the
-- `files` row is pointed at that blob (and the previous blob's chunks go) in
-- one transaction. A row with no blob is a file uploaded before this
-- migration: its bytes are on the disk of the master that took it.
ALTER TABLE files ADD COLUMN blob TEXT;
CREATE INDEX files_blob ON files (blob);
CREATE TABLE file_blobs (
    blob TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (blob, seq)
);
