ALTER TABLE enriched_findings ADD COLUMN description TEXT;
