-- Gold pairs: pairs whose answer is known, mixed into the queue to check annotators.
-- `gold` holds the known choice; a gold pair's judgements are never exported (but
-- in `raw`) nor trained on.
ALTER TABLE pairs ADD COLUMN gold TEXT CHECK (gold IS NULL OR gold IN ('a', 'b', 'tie', 'both_bad'));
CREATE INDEX pairs_gold ON pairs(id) WHERE gold IS NOT NULL;
