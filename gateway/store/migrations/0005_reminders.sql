-- Reminders: deliveries due before the appointment, one per event, sink and reminder; and when each was first due.
ALTER TABLE deliveries ADD COLUMN reminder double precision;
ALTER TABLE deliveries ADD COLUMN due_at double precision;
UPDATE deliveries SET due_at = created_at;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_sink_key;
CREATE UNIQUE INDEX deliveries_one ON deliveries (event_id, sink, (coalesce(reminder, -1)));
