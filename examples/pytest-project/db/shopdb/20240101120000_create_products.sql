-- migrate:up
CREATE TABLE products (
    name VARCHAR(100) PRIMARY KEY,
    price_cents INTEGER NOT NULL
);

-- migrate:down
DROP TABLE products;
