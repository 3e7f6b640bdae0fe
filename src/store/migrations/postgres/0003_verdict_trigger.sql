-- The verdict trigger of 0001 looked its pairs up with `= ANY (array)`, which
-- PL/pgSQL's cached generic plan turned into a scan of every label after a few
-- calls: one judgement cost time in proportion to all of them. One pair at a time
-- by `=`, the lookup walks the index.
CREATE OR REPLACE FUNCTION duel_refresh_verdict() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    one_pair BIGINT;
BEGIN
    FOREACH one_pair IN ARRAY CASE TG_OP
        WHEN 'INSERT' THEN ARRAY[NEW.pair_id]
        WHEN 'DELETE' THEN ARRAY[OLD.pair_id]
        ELSE (CASE WHEN OLD.pair_id = NEW.pair_id THEN ARRAY[NEW.pair_id]
                   ELSE ARRAY[OLD.pair_id, NEW.pair_id] END)
    END LOOP
        DELETE FROM pair_verdicts WHERE pair_id = one_pair;
        INSERT INTO pair_verdicts (pair_id, choices, lean, against)
        SELECT v.pair_id, v.choices, v.lean,
               coalesce(CASE v.lean WHEN 1 THEN 0.5 - s.p_a WHEN -1 THEN s.p_a - 0.5 ELSE 0 END, 0)
        FROM (SELECT pair_id, count(DISTINCT choice) AS choices,
                     CASE WHEN count(*) FILTER (WHERE choice = 'a') > count(*) FILTER (WHERE choice = 'b') THEN 1
                          WHEN count(*) FILTER (WHERE choice = 'b') > count(*) FILTER (WHERE choice = 'a') THEN -1
                          ELSE 0 END AS lean
              FROM labels WHERE undone_at IS NULL AND pair_id = one_pair GROUP BY pair_id) v
        LEFT JOIN pair_scores s ON s.pair_id = v.pair_id;
    END LOOP;
    RETURN NULL;
END
$$;

-- The disagreement order sorts by (choices, against, pair_id): with pair_id in the
-- index (SQLite's index holds the row id already) the walk needs no sort.
DROP INDEX pair_verdicts_order;
CREATE INDEX pair_verdicts_order ON pair_verdicts(choices DESC, against DESC, pair_id);
