-- A job's output file is looked up by the deletion of a file through the gateway whatever its watch's status: the
-- output of a job billed goes at once, while a file no watch names may have its pending jobs read from Mistral first:
-- those of the workspace whose output is not known yet, found by an index of their own rather than among every
-- workspace's pending jobs.
DROP INDEX "watched_jobs_pending_output_idx";--> statement-breakpoint
CREATE INDEX "watched_jobs_output_idx" ON "watched_jobs" USING btree ("output_file") WHERE "watched_jobs"."output_file" is not null;--> statement-breakpoint
CREATE INDEX "watched_jobs_unknown_output_idx" ON "watched_jobs" USING btree ("workspace_id") WHERE "watched_jobs"."status" = 'pending' and "watched_jobs"."output_file" is null;
