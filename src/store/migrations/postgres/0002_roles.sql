-- The roles a team needs, and what each may do.
--
-- duel_lead: everything (import, export, adjudicate, train). duel_annotator: read the
-- pairs (not the known answers of gold pairs), the judgements, the scores and the
-- model's progress; write its own judgements (and undo them) and its own claims;
-- nothing else. A person is a login role that is a member of one of them:
--     CREATE ROLE alice LOGIN IN ROLE duel_annotator;
-- and the annotator name is that role's name. Roles belong to the server, not to
-- the database, so they are created only when missing.

-- Created only when missing, so that a database owner without CREATEROLE can
-- migrate once an administrator has made them; the role that migrates becomes a
-- member of duel_lead (it hands the tables to that role below, which only a member
-- may), which needs CREATEROLE unless the administrator granted it. `duel migrate`
-- checks both first and says what to ask for.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'duel_annotator') THEN
        CREATE ROLE duel_annotator NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'duel_lead') THEN
        CREATE ROLE duel_lead NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
-- (From PostgreSQL 16 a new owner must be a role one may SET ROLE to, and the
-- creator of a role is its member only to administer it.)
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
        AND NOT pg_has_role(current_user, 'duel_lead',
            CASE WHEN current_setting('server_version_num')::int >= 160000
                 THEN 'SET' ELSE 'MEMBER' END) THEN
        EXECUTE format('GRANT duel_lead TO %I', current_user);
    END IF;
END
$$;
-- The new owner of a table needs CREATE on its schema (PostgreSQL 15 no longer
-- grants it to everyone).
GRANT CREATE ON SCHEMA public TO duel_lead;

-- Whether a pair is a gold pair, readable by those who may not read its answer.
ALTER TABLE pairs ADD COLUMN is_gold BOOLEAN GENERATED ALWAYS AS (gold IS NOT NULL) STORED;

-- The verdicts are kept by the trigger with its owner's rights, whoever judged.
ALTER FUNCTION duel_refresh_verdict() SECURITY DEFINER SET search_path = public, pg_temp;

-- The lead owns the tables: a large import sets their indexes aside and builds them
-- again, which only an owner may.
ALTER TABLE prompts OWNER TO duel_lead;
ALTER TABLE responses OWNER TO duel_lead;
ALTER TABLE pairs OWNER TO duel_lead;
ALTER TABLE labels OWNER TO duel_lead;
ALTER TABLE train_runs OWNER TO duel_lead;
ALTER TABLE train_metrics OWNER TO duel_lead;
ALTER TABLE checkpoints OWNER TO duel_lead;
ALTER TABLE claims OWNER TO duel_lead;
ALTER TABLE pair_scores OWNER TO duel_lead;
ALTER TABLE pair_verdicts OWNER TO duel_lead;
ALTER TABLE train_lease OWNER TO duel_lead;
ALTER VIEW pair_verdicts_fresh OWNER TO duel_lead;

GRANT USAGE ON SCHEMA public TO duel_lead, duel_annotator;
GRANT ALL ON ALL TABLES IN SCHEMA public TO duel_lead;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO duel_lead;

GRANT SELECT ON prompts, responses, labels, claims, pair_scores, pair_verdicts,
    pair_verdicts_fresh, train_runs, train_metrics, checkpoints, train_lease, duel_schema
    TO duel_annotator;
GRANT SELECT (id, prompt_id, response_a, response_b, content_hash, ext_id, meta, extra,
    source, created_at, is_gold) ON pairs TO duel_annotator;
GRANT INSERT ON labels TO duel_annotator;
GRANT UPDATE (undone_at) ON labels TO duel_annotator;
GRANT INSERT, UPDATE, DELETE ON claims TO duel_annotator;

ALTER TABLE labels ENABLE ROW LEVEL SECURITY;
CREATE POLICY labels_read ON labels FOR SELECT USING (true);
-- An annotator judges as itself, and neither adjudicates nor imports.
CREATE POLICY labels_own ON labels FOR INSERT TO duel_annotator
    WITH CHECK (annotator = current_user AND source NOT IN ('adjudication', 'import'));
CREATE POLICY labels_own_undo ON labels FOR UPDATE TO duel_annotator
    USING (annotator = current_user) WITH CHECK (annotator = current_user);
CREATE POLICY labels_lead ON labels FOR ALL TO duel_lead USING (true) WITH CHECK (true);

ALTER TABLE claims ENABLE ROW LEVEL SECURITY;
CREATE POLICY claims_read ON claims FOR SELECT USING (true);
CREATE POLICY claims_own ON claims FOR INSERT TO duel_annotator
    WITH CHECK (annotator = current_user);
CREATE POLICY claims_own_renew ON claims FOR UPDATE TO duel_annotator
    USING (annotator = current_user) WITH CHECK (annotator = current_user);
-- Its own claims, and anyone's that expired (a labeler that died).
CREATE POLICY claims_own_release ON claims FOR DELETE TO duel_annotator
    USING (annotator = current_user OR expires_at <= extract(epoch FROM clock_timestamp()));
CREATE POLICY claims_lead ON claims FOR ALL TO duel_lead USING (true) WITH CHECK (true);
