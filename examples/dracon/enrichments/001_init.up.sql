-- Findings enriched by the enrichment component.
CREATE TABLE enriched_findings (
    id INTEGER PRIMARY KEY,
    tool VARCHAR(255) NOT NULL,
    target VARCHAR(1024) NOT NULL,
    severity INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX enriched_findings_tool ON enriched_findings (tool);
