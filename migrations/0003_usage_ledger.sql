CREATE TABLE "usage_daily" (
	"workspace_id" uuid NOT NULL,
	"day" date NOT NULL,
	"token_id" uuid,
	"model" text NOT NULL,
	"operation" text NOT NULL,
	"calls" bigint DEFAULT 0 NOT NULL,
	"estimated_calls" bigint DEFAULT 0 NOT NULL,
	"prompt_tokens" bigint DEFAULT 0 NOT NULL,
	"cached_tokens" bigint DEFAULT 0 NOT NULL,
	"completion_tokens" bigint DEFAULT 0 NOT NULL,
	"total_tokens" bigint DEFAULT 0 NOT NULL,
	"connector_tokens" bigint DEFAULT 0 NOT NULL,
	"pages" bigint DEFAULT 0 NOT NULL,
	"audio_seconds" bigint DEFAULT 0 NOT NULL,
	"characters" bigint DEFAULT 0 NOT NULL,
	"list_cost_micros" bigint DEFAULT 0 NOT NULL,
	"billed_cost_micros" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "usage_daily_key" UNIQUE NULLS NOT DISTINCT("workspace_id","day","token_id","model","operation")
);
--> statement-breakpoint
CREATE TABLE "watched_jobs" (
	"job_id" text PRIMARY KEY NOT NULL,
	"workspace_id" uuid NOT NULL,
	"token_id" uuid,
	"key_name" text NOT NULL,
	"request_id" text NOT NULL,
	"endpoint" text,
	"model" text,
	"status" text DEFAULT 'pending' NOT NULL,
	"upstream_status" text,
	"checked_at" timestamp with time zone,
	"completed_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "usage_records" ADD COLUMN "priced_model" text;--> statement-breakpoint
ALTER TABLE "usage_records" ADD COLUMN "service_tier" text;--> statement-breakpoint
ALTER TABLE "usage_records" ADD COLUMN "connector_tokens" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "watched_jobs_status_idx" ON "watched_jobs" USING btree ("status","checked_at");