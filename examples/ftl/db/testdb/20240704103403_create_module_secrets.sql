-- migrate:up
CREATE TABLE module_secrets (
    id INTEGER PRIMARY KEY,
    module VARCHAR(255) NOT NULL,
    secret_ref VARCHAR(1024) NOT NULL
);

-- migrate:down
DROP TABLE module_secrets;
