-- Tombstones: the provider ids of purged events, so that a request replayed after retention is a duplicate.
CREATE TABLE purged_events (
    source text NOT NULL,
    provider_event_id text NOT NULL,
    event_id text NOT NULL,
    purged_at double precision NOT NULL,
    PRIMARY KEY (source, provider_event_id)
);
CREATE INDEX purged_events_at ON purged_events (purged_at);
