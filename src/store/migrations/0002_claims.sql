-- Short-lived claims: the pair a labeler has on screen, so that other labelers on the
-- same database pass over it. A claim is renewed while the pair is shown and expires
-- when its process dies.
CREATE TABLE claims (
    pair_id    INTEGER NOT NULL REFERENCES pairs(id),
    annotator  TEXT NOT NULL,
    session    TEXT NOT NULL,      -- one per labeler process
    expires_at REAL NOT NULL,      -- Unix time, seconds
    PRIMARY KEY (pair_id, session)
);
CREATE INDEX claims_session ON claims(session);
