-- The `disagreement` queue order walks an index of the judged pairs instead of sorting
-- them all on each claim (a third of a second a claim at 100,000 judged pairs). Each
-- judged pair keeps its sort key here, kept up to date by triggers as judgements are
-- made or undone and as the live model scores pairs:
--   choices  how many different choices its live judgements make (ties and both-bad
--            count), so contested pairs come first;
--   lean     1 if more live judgements chose A than B, -1 if more chose B, else 0;
--   against  how confidently the model's latest prediction contradicts that lean
--            (0.5 - p_a for A, p_a - 0.5 for B; 0 without a lean or a prediction).
-- A pair none of whose judgements is live has no row.
CREATE TABLE pair_verdicts (
    pair_id INTEGER PRIMARY KEY REFERENCES pairs(id),
    choices INTEGER NOT NULL,
    lean    INTEGER NOT NULL,
    against REAL NOT NULL
);
CREATE INDEX pair_verdicts_order ON pair_verdicts(choices DESC, against DESC);

-- The keys from scratch: the backfill below, a bulk import's rebuild, and the
-- triggers (for one pair) all read this view.
CREATE VIEW pair_verdicts_fresh AS
SELECT v.pair_id, v.choices, v.lean,
       coalesce(CASE v.lean WHEN 1 THEN 0.5 - s.p_a WHEN -1 THEN s.p_a - 0.5 ELSE 0 END, 0)
           AS against
FROM (SELECT pair_id, count(DISTINCT choice) AS choices,
             CASE WHEN sum(choice = 'a') > sum(choice = 'b') THEN 1
                  WHEN sum(choice = 'b') > sum(choice = 'a') THEN -1
                  ELSE 0 END AS lean
      FROM labels WHERE undone_at IS NULL GROUP BY pair_id) v
LEFT JOIN pair_scores s ON s.pair_id = v.pair_id;

INSERT INTO pair_verdicts (pair_id, choices, lean, against)
SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh;

-- A pair's row again, from the view, whenever its judgements or its score change
-- (a pair with no live judgement gets no row).
CREATE TRIGGER labels_verdict_insert AFTER INSERT ON labels BEGIN
    DELETE FROM pair_verdicts WHERE pair_id = NEW.pair_id;
    INSERT INTO pair_verdicts (pair_id, choices, lean, against)
    SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh
    WHERE pair_id = NEW.pair_id;
END;

CREATE TRIGGER labels_verdict_update AFTER UPDATE ON labels BEGIN
    DELETE FROM pair_verdicts WHERE pair_id IN (OLD.pair_id, NEW.pair_id);
    INSERT INTO pair_verdicts (pair_id, choices, lean, against)
    SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh
    WHERE pair_id IN (OLD.pair_id, NEW.pair_id);
END;

CREATE TRIGGER pair_scores_verdict_insert AFTER INSERT ON pair_scores BEGIN
    DELETE FROM pair_verdicts WHERE pair_id = NEW.pair_id;
    INSERT INTO pair_verdicts (pair_id, choices, lean, against)
    SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh
    WHERE pair_id = NEW.pair_id;
END;

CREATE TRIGGER pair_scores_verdict_update AFTER UPDATE ON pair_scores BEGIN
    DELETE FROM pair_verdicts WHERE pair_id IN (OLD.pair_id, NEW.pair_id);
    INSERT INTO pair_verdicts (pair_id, choices, lean, against)
    SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh
    WHERE pair_id IN (OLD.pair_id, NEW.pair_id);
END;

CREATE TRIGGER pair_scores_verdict_delete AFTER DELETE ON pair_scores BEGIN
    DELETE FROM pair_verdicts WHERE pair_id = OLD.pair_id;
    INSERT INTO pair_verdicts (pair_id, choices, lean, against)
    SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh
    WHERE pair_id = OLD.pair_id;
END;
