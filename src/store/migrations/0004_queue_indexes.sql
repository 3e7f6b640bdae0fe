-- The random and uncertain queue orders walk these indexes and stop at the first pair
-- they can serve, instead of sorting every pair on each claim (a second a claim at a
-- million pairs). The shuffle expression must stay exactly as the queries write it.
CREATE INDEX pairs_shuffle ON pairs(((id * 2654435761) % 4294967311));
CREATE INDEX pair_scores_uncertainty ON pair_scores(abs(p_a - 0.5));
