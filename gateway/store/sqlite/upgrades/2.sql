-- Version 2 -> 3: deliveries_due and deliveries_order hold pending deliveries only; schema.sql makes them again.
DROP INDEX IF EXISTS deliveries_due;
DROP INDEX IF EXISTS deliveries_order;
