ALTER TABLE experiments DROP COLUMN started_at;
