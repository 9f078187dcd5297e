CREATE TABLE "model_prices" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"model" text NOT NULL,
	"currency" text NOT NULL,
	"family" text NOT NULL,
	"input_per_mtok" bigint DEFAULT 0 NOT NULL,
	"output_per_mtok" bigint DEFAULT 0 NOT NULL,
	"cached_input_per_mtok" bigint,
	"audio_per_minute" bigint DEFAULT 0 NOT NULL,
	"pages_per_1000" bigint DEFAULT 0 NOT NULL,
	"annotated_pages_per_1000" bigint DEFAULT 0 NOT NULL,
	"characters_per_m" bigint DEFAULT 0 NOT NULL,
	"output_ceiling" integer,
	"aliases" text[] DEFAULT '{}'::text[] NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "model_prices_non_negative" CHECK (least("model_prices"."input_per_mtok", "model_prices"."output_per_mtok", "model_prices"."cached_input_per_mtok", "model_prices"."audio_per_minute", "model_prices"."pages_per_1000", "model_prices"."annotated_pages_per_1000", "model_prices"."characters_per_m") >= 0)
);
--> statement-breakpoint
CREATE UNIQUE INDEX "model_prices_model_currency_family_idx" ON "model_prices" USING btree ("model","currency","family");