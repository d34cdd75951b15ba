-- Raw landing zone: what the ingest service stores, exactly once per (meter_id, ts).
create schema if not exists raw;

create table if not exists raw.readings (
    meter_id      text        not null,
    ts            timestamptz not null,            -- end of the interval, UTC
    interval_s    integer     not null check (interval_s between 300 and 86400),
    kwh           double precision not null check (kwh >= 0),
    register_kwh  double precision,
    voltage_v     double precision,
    current_a     double precision,
    power_factor  double precision,
    temperature_c double precision,
    humidity_pct  double precision,
    wind_ms       double precision,
    supply        text        not null default 'on' check (supply in ('on', 'off')),
    flags         text[]      not null default '{}',
    score         double precision,
    model_version text,
    gateway_id    text        not null,
    batch_id      text        not null,
    received_at   timestamptz not null default now(),
    primary key (meter_id, ts)
);
-- Incremental loads and time-range scans read by arrival and by time.
create index if not exists readings_received_at_idx on raw.readings using brin (received_at);
create index if not exists readings_ts_idx on raw.readings using brin (ts);

-- Everything that could not become a reading, with the reason. Never silently dropped.
create table if not exists raw.quarantine (
    quarantine_id bigserial   primary key,
    raw           text        not null,
    reason        text        not null,
    received_at   timestamptz not null,            -- when the first hop received it
    stored_at     timestamptz not null default now(),
    source        text        not null,            -- where it came from (topic, spool file, ...)
    gateway_id    text,
    batch_id      text,
    -- Set for whole messages quarantined at ingest: the same bad message resent is stored once.
    payload_sha256 text
);
create unique index if not exists quarantine_payload_uq on raw.quarantine (payload_sha256)
    where payload_sha256 is not null;
create index if not exists quarantine_stored_at_idx on raw.quarantine (stored_at);
create index if not exists quarantine_reason_idx on raw.quarantine (reason);

-- The batch ledger: one row per (gateway, batch) ever stored, with the ack that was sent.
-- A batch delivered again is answered from here, with the same ack.
create table if not exists raw.ingest_batches (
    gateway_id  text        not null,
    batch_id    text        not null,
    batch_seq   bigint      not null,
    sent_at     timestamptz not null,
    stored_at   timestamptz not null default now(),
    readings    integer     not null,
    inserted    integer     not null,
    duplicates  integer     not null,
    conflicts   integer     not null,
    quarantined integer     not null,
    status      text        not null check (status in ('stored', 'rejected')),
    ack         jsonb       not null,
    primary key (gateway_id, batch_id)
);
create index if not exists ingest_batches_stored_at_idx on raw.ingest_batches (stored_at);

-- Last status.v1 of each gateway (retained message) plus a history for health dashboards.
create table if not exists raw.gateway_status (
    gateway_id  text        not null,
    sent_at     timestamptz not null,
    received_at timestamptz not null default now(),
    state       text        not null,
    status      jsonb       not null,
    primary key (gateway_id, sent_at)
);

-- Registry: grid assets (regions, feeders, distribution transformers).
create table if not exists raw.grid_assets (
    asset_id        text primary key,
    asset_type      text not null check (asset_type in ('region', 'feeder', 'transformer')),
    parent_id       text references raw.grid_assets (asset_id),
    name            text,
    rated_kva       double precision,
    latitude        double precision,
    longitude       double precision,
    updated_at      timestamptz not null default now()
);

-- Registry: meters (customers and transformer supply meters).
create table if not exists raw.meters (
    meter_id        text primary key,
    meter_role      text not null default 'customer' check (meter_role in ('customer', 'transformer')),
    customer_class  text,
    tariff          text check (tariff in ('prepaid', 'postpaid')),
    transformer_id  text references raw.grid_assets (asset_id),
    feeder_id       text references raw.grid_assets (asset_id),
    region          text,
    latitude        double precision,
    longitude       double precision,
    gateway_id      text,
    installed_at    timestamptz,
    updated_at      timestamptz not null default now()
);
create index if not exists meters_transformer_idx on raw.meters (transformer_id);
