-- Dispatch leases (see the Postgres flavour). SQLite serves one master, so
-- there is no cross-master wake-up here.
ALTER TABLE processes ADD COLUMN lease_until BIGINT;
ALTER TABLE processes ADD COLUMN token_hash_next TEXT;
CREATE INDEX processes_init_lease ON processes (lease_until) WHERE state = 'init';
