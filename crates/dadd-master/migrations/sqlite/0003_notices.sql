-- Notification outbox (see the Postgres flavour; SQLite serves one master,
-- so there is no wake-up trigger).
CREATE TABLE notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    proc_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    sent BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT,
    done_at BIGINT,
    last_error TEXT
);
CREATE INDEX notices_due ON notices (due_at) WHERE done_at IS NULL;
