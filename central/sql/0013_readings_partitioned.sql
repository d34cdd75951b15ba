-- raw.readings partitioned by month of ts, so old months leave as whole partitions
-- (`central retention run`: dropped only once the warehouse holds every row of them) instead of
-- as a DELETE of millions of rows. Monthly: a 1,000-meter site writes ~1.5 M rows a month, few
-- enough partitions for a year or two of history, and the retention period is counted in months.
-- A DEFAULT partition takes any ts outside the partitions made so far (a gateway clock far
-- off, a backlog from long ago): no insert ever fails for want of a partition.
-- raw.ensure_reading_partitions(from, to) makes the months of [from, to) (moving their rows out
-- of the DEFAULT partition first); the retention job calls it for the months ahead.

create or replace function raw.ensure_reading_partitions(lo timestamptz, hi timestamptz)
returns integer
language plpgsql
as $$
declare
    m timestamptz := date_trunc('month', lo, 'UTC');
    made integer := 0;
    name text;
begin
    while m < hi loop
        name := 'readings_' || to_char(m at time zone 'UTC', '"y"YYYY"m"MM');
        if to_regclass('raw.' || name) is null then
            -- rows of that month waiting in the DEFAULT partition move into the new one
            create temporary table if not exists eiot_moving (like raw.readings) on commit drop;
            with moved as (
                delete from raw.readings_default
                where ts >= m and ts < m + interval '1 month'
                returning *
            )
            insert into eiot_moving select * from moved;
            execute format(
                'create table raw.%I partition of raw.readings for values from (%L) to (%L)',
                name, m, m + interval '1 month'
            );
            insert into raw.readings select * from eiot_moving;
            truncate eiot_moving;
            made := made + 1;
        end if;
        m := m + interval '1 month';
    end loop;
    return made;
end
$$;
comment on function raw.ensure_reading_partitions(timestamptz, timestamptz) is
    $$Create the monthly partitions of raw.readings covering [lo, hi) (UTC months) that do not exist yet, moving their rows out of the DEFAULT partition; returns how many were made.$$;

do $$
begin
    if (select relkind from pg_class where oid = 'raw.readings'::regclass) = 'p' then
        return;  -- partitioned already
    end if;
    alter table raw.readings rename to readings_unpartitioned;
    alter index raw.readings_pkey rename to readings_unpartitioned_pkey;
    alter index raw.readings_received_at_idx rename to readings_unpartitioned_received_at_idx;
    alter index raw.readings_ts_idx rename to readings_unpartitioned_ts_idx;

    create table raw.readings (
        like raw.readings_unpartitioned including defaults including constraints
            including comments
    ) partition by range (ts);
    alter table raw.readings add primary key (meter_id, ts);
    create index readings_received_at_idx on raw.readings using brin (received_at);
    create index readings_ts_idx on raw.readings using brin (ts);
    create table raw.readings_default partition of raw.readings default;
    perform raw.ensure_reading_partitions(
        coalesce((select min(ts) from raw.readings_unpartitioned), now()),
        now() + interval '3 months'
    );
    insert into raw.readings select * from raw.readings_unpartitioned;
    drop table raw.readings_unpartitioned;

    comment on table raw.readings is
        $c$Meter readings stored by central ingest from readings.v1/v2 batches: one row per (meter_id, ts), the first stored value wins. A later reading with the same key and other values goes to raw.quarantine as a conflict. Partitioned by month of ts (raw.readings_yYYYYmMM, and raw.readings_default for any other ts); old months are dropped by `central retention run` once the warehouse holds them.$c$;
    -- the grants of 0008_roles.sql, on the new table (partitions are reached through it)
    grant select, insert on raw.readings to eiot_ingest;
    grant select on raw.readings to eiot_loader, eiot_ml;
end
$$;
