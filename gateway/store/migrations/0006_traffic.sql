-- Webhooks answered and attempts made, per minute, added by every process; kept a day or two for the console.
CREATE TABLE traffic (
    minute bigint NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    outcome text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (minute, kind, name, outcome)
);
