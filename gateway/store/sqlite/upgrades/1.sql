-- Version 1 -> 2, reminders: SQLite cannot drop version 1's UNIQUE (event_id, sink), so deliveries are copied into a
-- table with the reminder columns; schema.sql then adds the new unique index and the others.
CREATE TABLE IF NOT EXISTS deliveries_2 (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id),
    sink TEXT NOT NULL,
    locale TEXT,
    ordering_key TEXT,
    occurred_at REAL NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    last_error TEXT,
    dead_reason TEXT,
    updated_at REAL NOT NULL,
    requeued_at REAL,
    attempts_before_requeue INTEGER NOT NULL DEFAULT 0,
    reminder REAL,
    due_at REAL
);

INSERT INTO deliveries_2 SELECT *, NULL, created_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_2 RENAME TO deliveries;
