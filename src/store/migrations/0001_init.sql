-- Prompts, responses and pairs are content-addressed (16-byte BLAKE3 digests) so that
-- re-importing a file adds nothing.
CREATE TABLE prompts (
    id         INTEGER PRIMARY KEY,
    hash       BLOB NOT NULL,
    text       TEXT NOT NULL,
    messages   TEXT,               -- JSON list of {role, content} when conversational
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX prompts_hash ON prompts(hash);

CREATE TABLE responses (
    id         INTEGER PRIMARY KEY,
    prompt_id  INTEGER NOT NULL REFERENCES prompts(id),
    text       TEXT NOT NULL,
    generator  TEXT,               -- model name when generated locally
    gen_meta   TEXT,               -- JSON: settings, seed, token counts, time
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE pairs (
    id           INTEGER PRIMARY KEY,
    prompt_id    INTEGER NOT NULL REFERENCES prompts(id),
    response_a   INTEGER NOT NULL REFERENCES responses(id),
    response_b   INTEGER NOT NULL REFERENCES responses(id),
    content_hash BLOB NOT NULL,
    ext_id       TEXT,             -- the `id` of the imported record
    meta         TEXT,             -- JSON: the record's `meta`
    extra        TEXT,             -- JSON: other fields of the record, kept as given
    source       TEXT,             -- file it came from, or `generate`
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX pairs_content_hash ON pairs(content_hash);
CREATE UNIQUE INDEX pairs_ext_id ON pairs(ext_id);
CREATE INDEX pairs_prompt ON pairs(prompt_id);

-- One row per judgement. Undo sets `undone_at`; rows are never deleted, so the
-- history stays auditable in `raw` export.
CREATE TABLE labels (
    id         INTEGER PRIMARY KEY,
    pair_id    INTEGER NOT NULL REFERENCES pairs(id),
    annotator  TEXT NOT NULL,
    choice     TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
    strength   INTEGER CHECK (strength BETWEEN 0 AND 3),
    left_side  TEXT CHECK (left_side IN ('a', 'b')),
    note       TEXT,
    elapsed_ms INTEGER CHECK (elapsed_ms >= 0),
    source     TEXT NOT NULL DEFAULT 'tui',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    undone_at  TEXT
);
CREATE INDEX labels_pair ON labels(pair_id) WHERE undone_at IS NULL;
CREATE INDEX labels_annotator ON labels(annotator, pair_id) WHERE undone_at IS NULL;
CREATE INDEX labels_created ON labels(created_at);

-- Training: one row per step or evaluation, so charts survive a restart.
CREATE TABLE train_runs (
    id         INTEGER PRIMARY KEY,
    config     TEXT NOT NULL,      -- JSON
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE train_metrics (
    run_id     INTEGER NOT NULL REFERENCES train_runs(id),
    step       INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('train', 'eval')),
    loss       REAL,
    accuracy   REAL,
    pairs_per_s REAL,
    labels_used INTEGER,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, step, kind)
);

CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER REFERENCES train_runs(id),
    step       INTEGER NOT NULL,
    path       TEXT NOT NULL,
    val_accuracy REAL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
