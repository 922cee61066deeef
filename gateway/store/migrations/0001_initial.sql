-- The gateway's tables on PostgreSQL. Times are seconds since the Unix epoch, as the store protocol speaks them.
CREATE TABLE events (
    id text PRIMARY KEY,
    source text NOT NULL,
    provider_event_id text NOT NULL,
    provider_event_type text NOT NULL,
    provider_delivery_id text,
    type text,
    occurred_at double precision NOT NULL,
    received_at double precision NOT NULL,
    ordering_key text,
    canonical text,
    raw_body bytea NOT NULL,
    headers jsonb NOT NULL,
    appointment_id text,
    customer_phone text,
    customer_email text,
    UNIQUE (source, provider_event_id)
);
CREATE INDEX events_received ON events (received_at, id);
CREATE INDEX events_appointment ON events (appointment_id);
CREATE INDEX events_phone ON events (customer_phone);
CREATE INDEX events_email ON events (customer_email);

CREATE TABLE deliveries (
    id text PRIMARY KEY,
    event_id text NOT NULL REFERENCES events (id),
    sink text NOT NULL,
    locale text,
    ordering_key text,
    occurred_at double precision NOT NULL,
    created_at double precision NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    lease_owner text,
    lease_expires_at double precision,
    last_error text,
    dead_reason text,
    updated_at double precision NOT NULL,
    requeued_at double precision,
    attempts_before_requeue integer NOT NULL DEFAULT 0,
    UNIQUE (event_id, sink)
);
CREATE INDEX deliveries_dead ON deliveries (sink, updated_at) WHERE status = 'dead';
-- in claim order: a claim reads the index up to its limit instead of sorting the whole backlog
CREATE INDEX deliveries_due ON deliveries (sink, next_attempt_at, occurred_at) WHERE status = 'pending';
CREATE INDEX deliveries_order ON deliveries (sink, ordering_key, occurred_at) WHERE status = 'pending';

CREATE TABLE attempts (
    id bigserial PRIMARY KEY,
    delivery_id text NOT NULL REFERENCES deliveries (id),
    number integer NOT NULL,
    started_at double precision NOT NULL,
    duration_ms double precision NOT NULL,
    outcome text NOT NULL,
    status_code integer,
    detail text
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

CREATE TABLE sink_state (
    sink text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (sink, key)
);

CREATE TABLE sent_messages (
    delivery_id text NOT NULL REFERENCES deliveries (id),
    recipient text NOT NULL,
    provider_message_id text NOT NULL,
    sent_at double precision NOT NULL,
    PRIMARY KEY (delivery_id, recipient)
);
