-- A batch job is billed as one record, its counts summed over every line: a large job passes an integer's 2^31
-- tokens (100,000 requests of 22,000 tokens), and PostgreSQL refused its record. One statement, so that the table is
-- rewritten once, not once a column (the ledger is locked while it is).
ALTER TABLE "usage_records"
  ALTER COLUMN "prompt_tokens" SET DATA TYPE bigint,
  ALTER COLUMN "cached_tokens" SET DATA TYPE bigint,
  ALTER COLUMN "completion_tokens" SET DATA TYPE bigint,
  ALTER COLUMN "total_tokens" SET DATA TYPE bigint,
  ALTER COLUMN "pages" SET DATA TYPE bigint,
  ALTER COLUMN "audio_seconds" SET DATA TYPE bigint,
  ALTER COLUMN "characters" SET DATA TYPE bigint,
  ALTER COLUMN "connector_tokens" SET DATA TYPE bigint;
