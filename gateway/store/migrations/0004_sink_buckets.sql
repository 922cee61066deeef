-- Sinks' rate limits, shared by every process: a token bucket per sink, and a provider's Retry-After.
CREATE TABLE sink_buckets (
    sink text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at double precision NOT NULL,
    blocked_until double precision NOT NULL
);
