-- File bytes in the database (see the Postgres flavour). SQLite serves one
-- master, which keeps the bytes on its disk (<state_dir>/files/): the column
-- and the table stay empty here and exist so both schemas have one shape.
ALTER TABLE files ADD COLUMN blob TEXT;
CREATE INDEX files_blob ON files (blob);
CREATE TABLE file_blobs (
    blob TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (blob, seq)
);
