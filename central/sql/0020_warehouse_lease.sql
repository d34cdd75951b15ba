-- One writer of the warehouse at a time (central/warehouse/lease.py). A run of warehouse_refresh
-- holds the lease from its load to its publication: Airflow counts a backfill's runs apart from
-- the DAG's max_active_runs, and two builds into the one build database would publish a mix.
-- The row of a lease outlives its holders: its generation counts acquisitions, so a run whose
-- lease expired and was taken (even if since released) cannot go on as if it still held it.
create schema if not exists ops;
revoke all on schema ops from public;

create table if not exists ops.leases (
    name        text primary key check (name ~ '^[a-z_]{1,40}$'),
    generation  bigint not null check (generation > 0),
    holder      text check (length(holder) between 1 and 600),
    acquired_at timestamptz not null,
    expires_at  timestamptz not null
);
revoke all on ops.leases from public;

comment on schema ops is
    $$Coordination of the central jobs (leases); no readings.$$;
comment on table ops.leases is
    $$Leases of shared resources (central/warehouse/lease.py): warehouse is held by one run of warehouse_refresh from its load to its publication.$$;
comment on column ops.leases.name is
    $$The resource: warehouse (the warehouse's raw tables, build database and served marts).$$;
comment on column ops.leases.generation is
    $$Acquisitions so far: each acquisition increments it, a renewal keeps it. A run checks the generation it acquired, so a lease lost and taken in between (even by another attempt of the same run) is noticed.$$;
comment on column ops.leases.holder is
    $$Who holds it (warehouse_refresh/<run_id>); null when released.$$;
comment on column ops.leases.acquired_at is
    $$When the holder acquired it (or when it was released).$$;
comment on column ops.leases.expires_at is
    $$Until when it is held unless renewed (the holder renews it for EIOT_LEASE_TTL_S while it works): a holder that died frees it then.$$;

-- eiot_loader runs warehouse_refresh's steps: it takes, renews and releases the lease; it never
-- deletes a row (the generation must survive).
grant usage on schema ops to eiot_loader;
grant select, insert, update on ops.leases to eiot_loader;
