ALTER TABLE enriched_findings ADD COLUMN cve VARCHAR(32);
