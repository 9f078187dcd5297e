-- A batch job's charge to the spend counters is kept in its watch (charged_at), so that one Redis did not take is
-- sent again by any replica's poll, after a restart too; the jobs recorded before this were charged (or given up on)
-- then. The job's output file is kept too, so that its deletion through the gateway bills a pending job first.
ALTER TABLE "watched_jobs" ADD COLUMN "charged_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "watched_jobs" ADD COLUMN "output_file" text;--> statement-breakpoint
CREATE INDEX "watched_jobs_uncharged_idx" ON "watched_jobs" USING btree ("checked_at") WHERE "watched_jobs"."status" = 'recorded' and "watched_jobs"."charged_at" is null;--> statement-breakpoint
CREATE INDEX "watched_jobs_pending_output_idx" ON "watched_jobs" USING btree ("output_file") WHERE "watched_jobs"."status" = 'pending';--> statement-breakpoint
UPDATE "watched_jobs" SET "charged_at" = coalesce("checked_at", now()) WHERE "status" = 'recorded';
