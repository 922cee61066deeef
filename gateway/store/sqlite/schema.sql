-- The embedded store's schema, applied at every open (each statement is idempotent); `PRAGMA user_version`
-- says which version a file has. A file at an older version is first brought up by upgrades/<its version>.sql.
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    provider_event_type TEXT NOT NULL,
    provider_delivery_id TEXT,
    type TEXT,
    occurred_at REAL NOT NULL,
    received_at REAL NOT NULL,
    ordering_key TEXT,
    canonical TEXT,
    raw_body BLOB NOT NULL,
    headers TEXT NOT NULL,
    appointment_id TEXT,
    customer_phone TEXT,
    customer_email TEXT,
    UNIQUE (source, provider_event_id)
);
-- the listing, newest first; with the columns its filters read, a filter that matches few events walks this index
-- alone (a type no event has: 294 ms over a million events with the table read row by row)
CREATE INDEX IF NOT EXISTS events_listing ON events (received_at, id, source, type, provider_event_type);
DROP INDEX IF EXISTS events_received;
CREATE INDEX IF NOT EXISTS events_appointment ON events (appointment_id);
CREATE INDEX IF NOT EXISTS events_phone ON events (customer_phone);
CREATE INDEX IF NOT EXISTS events_email ON events (customer_email);

CREATE TABLE IF NOT EXISTS deliveries (
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

-- one delivery per event, sink and reminder: a fallback queued twice is queued once
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_one ON deliveries (event_id, sink, coalesce(reminder, -1));
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (status, sink, updated_at);
-- in claim order: a claim reads the index up to its limit instead of sorting the whole backlog. Both hold pending
-- deliveries only (as PostgreSQL's do): a few pages, rather than an entry per delivery ever made on a random page
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sink, next_attempt_at, occurred_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (sink, ordering_key, occurred_at) WHERE status = 'pending';
-- deliveries_one serves lookups by event; a separate index on event_id only cost every insert
DROP INDEX IF EXISTS deliveries_event;
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    status_code INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
CREATE TABLE IF NOT EXISTS sink_state (
    sink TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sink, key)
);
CREATE TABLE IF NOT EXISTS sink_controls (
    sink TEXT PRIMARY KEY,
    paused INTEGER NOT NULL,
    reason TEXT,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_buckets (
    sink TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated_at REAL NOT NULL,
    blocked_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS purged_events (
    source TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    purged_at REAL NOT NULL,
    PRIMARY KEY (source, provider_event_id)
);
CREATE INDEX IF NOT EXISTS purged_events_at ON purged_events (purged_at);
CREATE TABLE IF NOT EXISTS sent_messages (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    recipient TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (delivery_id, recipient)
);
-- webhooks answered and attempts made, per minute; kept a day or two for the console's overview
CREATE TABLE IF NOT EXISTS traffic (
    minute INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (minute, kind, name, outcome)
);
