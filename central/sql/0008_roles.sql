-- Least privilege: one NOLOGIN group role per kind of work, granted exactly what that work does.
-- Logins (one per service, with its own password) are members of one group role each:
-- central.roles.create_login(admin_dsn, name, role, password); a service's DSN names its login
-- (central.roles.dsn_for), never the owner or a superuser.
--
--   owner           whoever runs central.db.migrate (the database owner): owns every object, keeps
--                   every privilege, the only one that runs DDL. Not a group role: ownership is
--                   not granted here.
--   eiot_ingest     the MQTT -> PostgreSQL ingest worker (central/ingest.py, central/store.py)
--   eiot_loader     the warehouse load (central/warehouse/loader.py) and the quality checks on raw
--   eiot_ml         model registry and inspection ranking (ml/registry.py, ml/ranking.py)
--   eiot_dashboard  BI tools reading PostgreSQL: the inspection list only
--
-- THE RULE FOR LATER MIGRATIONS: every migration runs once per database, and there are no
-- ALTER DEFAULT PRIVILEGES, so a migration that adds a table, view, column a role writes, or
-- sequence must GRANT the roles what they need on it in the same file (and revoke nothing
-- here). Objects not granted are reachable by the owner only.
--
-- Roles are cluster-wide and several databases (every test database) share one cluster: they
-- are created only when missing. Creating them needs CREATEROLE; a DBA may create them (and the
-- pg_read_all_stats membership below) beforehand, then the owner needs no role privileges.

do $$
declare
    name text;
begin
    foreach name in array array['eiot_ingest', 'eiot_loader', 'eiot_ml', 'eiot_dashboard'] loop
        if not exists (select 1 from pg_roles where rolname = name) then
            begin
                execute format('create role %I nologin', name);
            exception when duplicate_object or unique_violation then
                null;  -- created meanwhile by a migration of another database
            end;
        end if;
    end loop;
end
$$;

-- Nobody but the owner and the roles below gets anything: not PUBLIC (every login).
-- CONNECT and TEMPORARY on a database are PUBLIC's by default: granted back to the roles only.
do $$
begin
    execute format('revoke all on database %I from public', current_database());
    execute format('grant connect on database %I to eiot_ingest, eiot_loader, eiot_ml, '
                   'eiot_dashboard', current_database());
    -- store_batch stages a batch in a temporary table (COPY, then INSERT ... ON CONFLICT).
    execute format('grant temporary on database %I to eiot_ingest', current_database());
end
$$;
revoke create on schema public from public;
revoke all on schema raw, ml from public;
revoke all on all tables in schema raw, ml from public;
revoke all on all sequences in schema raw, ml from public;

-- eiot_ingest -------------------------------------------------------------------------------
-- Exactly the statements of central/store.py and central/ingest.py:
--   raw.readings       INSERT (INSERT ... SELECT FROM the temp table, ON CONFLICT DO NOTHING);
--                      SELECT: `create temp table ... (like raw.readings)` needs it, and the
--                      stored values are read back to tell duplicates from conflicts.
--   raw.ingest_batches INSERT (claim), SELECT (the stored ack of a replay), UPDATE of the counts
--                      and the ack only: the key, batch_seq, status and times are never changed.
--   raw.quarantine     INSERT (+ its bigserial: USAGE on the sequence); never read back.
--   raw.gateway_status INSERT (ON CONFLICT DO NOTHING).
--   raw.alerts         INSERT, and SELECT of alert_id alone: `ON CONFLICT (alert_id) DO NOTHING`
--                      names a conflict target, which PostgreSQL checks for SELECT (it tells
--                      whether the key exists). The alerts themselves stay unreadable.
--   raw.meters         SELECT, for the meter ownership check (which gateway may send a meter).
grant usage on schema raw to eiot_ingest;
grant select, insert on raw.readings to eiot_ingest;
grant select, insert on raw.ingest_batches to eiot_ingest;
grant update (inserted, duplicates, conflicts, quarantined, ack) on raw.ingest_batches
    to eiot_ingest;
grant insert on raw.quarantine, raw.gateway_status, raw.alerts to eiot_ingest;
grant select (alert_id) on raw.alerts to eiot_ingest;
grant usage on sequence raw.quarantine_quarantine_id_seq to eiot_ingest;
grant select on raw.meters to eiot_ingest;

-- eiot_loader -------------------------------------------------------------------------------
-- central/warehouse/loader.py: `copy (select ... from raw.<table> where ...) to stdout` of every
-- raw table, and the quality suites on raw (central/warehouse/quality.py): SELECT only.
-- Its watermark (upper_bound) is the start of the oldest open transaction in pg_stat_activity;
-- a role that is not pg_read_all_stats sees xact_start as NULL for other users' sessions (the
-- ingest's), so without it the loader would read past a transaction still open and lose its
-- rows. Cluster-wide, granted once; needs superuser (or ADMIN on pg_read_all_stats): skipped
-- when a DBA granted it already.
grant usage on schema raw to eiot_loader;
grant select on all tables in schema raw to eiot_loader;
do $$
begin
    if not pg_has_role('eiot_loader', 'pg_read_all_stats', 'member') then
        begin
            grant pg_read_all_stats to eiot_loader;
        exception when unique_violation then
            null;  -- granted meanwhile by a migration of another database
        end;
    end if;
end
$$;

-- eiot_ml -----------------------------------------------------------------------------------
-- ml/dataset.py and ml/ranking.py read raw.readings and raw.meters; ml/registry.py inserts and
-- reads ml.models and marks a model published (UPDATE of published_at and topic only: the
-- signed message and everything it vouches for stay immutable, as the registry promises);
-- ml/ranking.py inserts runs and their rankings and never changes them. No DELETE: old runs
-- are kept (the owner prunes, if ever). ml has no sequences today; a later one is granted by
-- the migration that adds it.
grant usage on schema raw, ml to eiot_ml;
grant select on raw.readings, raw.meters to eiot_ml;
grant select, insert on ml.models, ml.ranking_runs, ml.customer_rankings to eiot_ml;
grant update (published_at, topic) on ml.models to eiot_ml;
grant select on ml.inspection_list to eiot_ml;

-- eiot_dashboard ----------------------------------------------------------------------------
-- The marts dashboards chart live in ClickHouse (dbt), with the meter and grid attributes
-- joined in. From PostgreSQL a dashboard needs only the current inspection list, and the view
-- already carries each meter's class, region and transformer: SELECT on ml.inspection_list and
-- nothing else (no raw table, not the ranking history). The view reads its tables with its
-- owner's rights, so no grant on ml.customer_rankings / ml.ranking_runs is needed.
grant usage on schema ml to eiot_dashboard;
grant select on ml.inspection_list to eiot_dashboard;
