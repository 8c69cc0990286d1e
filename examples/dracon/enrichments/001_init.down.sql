DROP TABLE enriched_findings;
