-- One trainer per database: the process that trains holds this lease and renews its
-- heartbeat; the others show the model it trains. A lease whose heartbeat is older
-- than the timeout (`store::LEASE_TTL`) is free for the taking, so a killed holder
-- hands training on.
CREATE TABLE train_lease (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    holder    TEXT NOT NULL,       -- who: an annotator, or `train --follow`
    session   TEXT NOT NULL,       -- one per process
    host      TEXT,
    pid       INTEGER,
    since     REAL NOT NULL,       -- Unix time, seconds
    heartbeat REAL NOT NULL
);
