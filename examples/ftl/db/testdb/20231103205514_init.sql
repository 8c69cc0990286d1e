-- migrate:up
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    created_at VARCHAR(32) NOT NULL,
    path VARCHAR(1024) NOT NULL
);

-- migrate:down
DROP TABLE requests;
