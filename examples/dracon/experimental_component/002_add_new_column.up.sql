ALTER TABLE experiments ADD COLUMN started_at VARCHAR(32);
