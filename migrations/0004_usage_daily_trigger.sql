-- usage_daily is kept by the database itself: a record counts in its day's rollup in the same transaction that
-- inserts it, and an insert skipped by ON CONFLICT DO NOTHING (a replayed record) fires nothing, so nothing counts twice.
-- The day is the calendar day in the workspace's time zone, as its spend caps count it.
CREATE FUNCTION usage_daily_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO usage_daily AS d (workspace_id, day, token_id, model, operation, calls, estimated_calls, prompt_tokens,
    cached_tokens, completion_tokens, total_tokens, connector_tokens, pages, audio_seconds, characters,
    list_cost_micros, billed_cost_micros)
  SELECT NEW.workspace_id,
    (NEW.created_at AT TIME ZONE coalesce((SELECT timezone FROM workspaces WHERE id = NEW.workspace_id), 'UTC'))::date,
    NEW.token_id, coalesce(NEW.priced_model, NEW.model, ''), NEW.operation, 1, CASE WHEN NEW.estimated THEN 1 ELSE 0 END,
    NEW.prompt_tokens, NEW.cached_tokens, NEW.completion_tokens, NEW.total_tokens, NEW.connector_tokens, NEW.pages,
    NEW.audio_seconds, NEW.characters, NEW.list_cost_micros, NEW.billed_cost_micros
  ON CONFLICT ON CONSTRAINT usage_daily_key DO UPDATE SET
    calls = d.calls + 1,
    estimated_calls = d.estimated_calls + EXCLUDED.estimated_calls,
    prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
    cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens,
    completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
    total_tokens = d.total_tokens + EXCLUDED.total_tokens,
    connector_tokens = d.connector_tokens + EXCLUDED.connector_tokens,
    pages = d.pages + EXCLUDED.pages,
    audio_seconds = d.audio_seconds + EXCLUDED.audio_seconds,
    characters = d.characters + EXCLUDED.characters,
    list_cost_micros = d.list_cost_micros + EXCLUDED.list_cost_micros,
    billed_cost_micros = d.billed_cost_micros + EXCLUDED.billed_cost_micros;
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE TRIGGER usage_records_daily AFTER INSERT ON usage_records FOR EACH ROW EXECUTE FUNCTION usage_daily_add();
--> statement-breakpoint
-- the records written before this migration
INSERT INTO usage_daily (workspace_id, day, token_id, model, operation, calls, estimated_calls, prompt_tokens,
  cached_tokens, completion_tokens, total_tokens, connector_tokens, pages, audio_seconds, characters,
  list_cost_micros, billed_cost_micros)
SELECT r.workspace_id, (r.created_at AT TIME ZONE coalesce(w.timezone, 'UTC'))::date, r.token_id,
  coalesce(r.priced_model, r.model, ''), r.operation, count(*), count(*) FILTER (WHERE r.estimated),
  sum(r.prompt_tokens), sum(r.cached_tokens), sum(r.completion_tokens), sum(r.total_tokens), sum(r.connector_tokens),
  sum(r.pages), sum(r.audio_seconds), sum(r.characters), sum(r.list_cost_micros), sum(r.billed_cost_micros)
FROM usage_records r LEFT JOIN workspaces w ON w.id = r.workspace_id
GROUP BY 1, 2, 3, 4, 5;
