-- Which queue order served each judgement, and the live model's predictions that
-- the `uncertain` and `disagreement` orders go by.
ALTER TABLE labels ADD COLUMN queue_order TEXT;

CREATE TABLE pair_scores (
    pair_id   INTEGER PRIMARY KEY REFERENCES pairs(id),
    p_a       REAL NOT NULL,      -- the model's probability that response A is better
    step      INTEGER NOT NULL,   -- the training step of the model that scored it
    scored_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
