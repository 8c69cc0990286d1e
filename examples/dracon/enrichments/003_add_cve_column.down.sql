ALTER TABLE enriched_findings DROP COLUMN cve;
