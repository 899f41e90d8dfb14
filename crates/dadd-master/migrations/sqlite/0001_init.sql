-- Dadd master store, SQLite flavour. Times are unix milliseconds; JSON is TEXT.
CREATE TABLE processes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    cmd TEXT NOT NULL,
    host_id BIGINT,
    host TEXT,
    pid BIGINT,
    exit_code BIGINT,
    signal BIGINT,
    reason TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    updated_at BIGINT NOT NULL,
    token_hash TEXT,
    missed_heartbeats BIGINT NOT NULL DEFAULT 0,
    log_size BIGINT NOT NULL DEFAULT 0,
    log_stored BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX processes_state_id ON processes (state, id);
CREATE INDEX processes_host_id ON processes (host, id);
CREATE INDEX processes_hostid_state ON processes (host_id, state);
CREATE INDEX processes_ended ON processes (ended_at);
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    proc_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    at BIGINT NOT NULL,
    reason TEXT
);
CREATE INDEX history_proc ON history (proc_id, id);
CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    port BIGINT NOT NULL,
    scheme TEXT NOT NULL,
    max_procs BIGINT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    last_heartbeat BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    UNIQUE (host, port)
);
CREATE TABLE log_chunks (
    proc_id BIGINT NOT NULL,
    "offset" BIGINT NOT NULL,
    len BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (proc_id, "offset")
);
CREATE TABLE files (
    path TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    modified BIGINT NOT NULL
);
