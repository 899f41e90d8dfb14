-- Several masters on one database.
-- A dispatch claim holds a lease: a process left `init` past `lease_until`
-- (its master died between claiming and hearing from the worker) is sent
-- again to the same worker by any master, which answers with the runner it
-- already started, or starts it now with the token in `token_hash_next`.
ALTER TABLE processes ADD COLUMN lease_until BIGINT;
ALTER TABLE processes ADD COLUMN token_hash_next TEXT;
CREATE INDEX processes_init_lease ON processes (lease_until) WHERE state = 'init';
-- Cross-master wake-up: every master LISTENs on `dadd_wake` and runs its
-- dispatcher when work is queued, a process ends (room on a host) or a host
-- comes up or changes its capacity. Notifications coalesce per transaction.
CREATE FUNCTION dadd_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dadd_wake', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER processes_wake AFTER INSERT OR UPDATE OF state ON processes
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'success', 'failed', 'killed', 'lost'))
    EXECUTE FUNCTION dadd_wake();
CREATE TRIGGER hosts_added_wake AFTER INSERT ON hosts
    FOR EACH ROW EXECUTE FUNCTION dadd_wake();
CREATE TRIGGER hosts_changed_wake AFTER UPDATE ON hosts
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.max_procs IS DISTINCT FROM NEW.max_procs)
    EXECUTE FUNCTION dadd_wake();
