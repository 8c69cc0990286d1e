-- migrate:up
ALTER TABLE products ADD COLUMN stock INTEGER NOT NULL DEFAULT 0;

-- migrate:down
ALTER TABLE products DROP COLUMN stock;
