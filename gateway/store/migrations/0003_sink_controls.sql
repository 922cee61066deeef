-- Paused sinks (an operator's `sinks pause`, or a refused login): every worker reads them before it claims.
CREATE TABLE sink_controls (
    sink text PRIMARY KEY,
    paused boolean NOT NULL,
    reason text,
    changed_at double precision NOT NULL
);
