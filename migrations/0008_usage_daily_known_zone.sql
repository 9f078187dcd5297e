-- A workspace whose time zone PostgreSQL does not know (one stored before the admin API asked PostgreSQL too, or a
-- name a later tzdata dropped) made the rollup trigger fail, and with it every ledger insert holding one of its
-- records: the batches of every workspace waited behind it. Its days are now UTC's until the zone is mended; the
-- zone is checked once per workspace of an insert, not once per record.
CREATE FUNCTION usage_daily_zone(zone text) RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
  PERFORM now() AT TIME ZONE zone;
  RETURN zone;
EXCEPTION WHEN invalid_parameter_value THEN
  RETURN 'UTC';
END
$$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION usage_daily_add_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO usage_daily AS d (workspace_id, day, token_id, model, operation, calls, estimated_calls, prompt_tokens,
    cached_tokens, completion_tokens, total_tokens, connector_tokens, pages, audio_seconds, characters,
    list_cost_micros, billed_cost_micros)
  SELECT r.workspace_id, (r.created_at AT TIME ZONE coalesce(w.zone, 'UTC'))::date, r.token_id,
    coalesce(r.priced_model, r.model, ''), r.operation, count(*), count(*) FILTER (WHERE r.estimated),
    sum(r.prompt_tokens), sum(r.cached_tokens), sum(r.completion_tokens), sum(r.total_tokens), sum(r.connector_tokens),
    sum(r.pages), sum(r.audio_seconds), sum(r.characters), sum(r.list_cost_micros), sum(r.billed_cost_micros)
  FROM inserted r
  LEFT JOIN (
    SELECT id, usage_daily_zone(timezone) AS zone FROM workspaces
    WHERE id IN (SELECT DISTINCT workspace_id FROM inserted)
  ) w ON w.id = r.workspace_id
  GROUP BY 1, 2, 3, 4, 5
  -- in the key's order: two replicas' inserts that touch the same rollup rows lock them in the same order, so neither
  -- waits for the other in a cycle (a deadlock)
  ORDER BY 1, 2, 3, 4, 5
  ON CONFLICT ON CONSTRAINT usage_daily_key DO UPDATE SET
    calls = d.calls + EXCLUDED.calls,
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
