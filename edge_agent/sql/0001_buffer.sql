-- v1: readings, quarantine, sync batches, counters, meta, the spool ledger.
-- Column names and types as the first agents created them (with sqlite-utils): a buffer made by
-- any version has the same schema.

-- seq: the order of acceptance; ts: end of interval, epoch seconds UTC; flags: comma-separated
-- meter events; accept_seq: which accept() call stored it; batch_id: null until frozen into a
-- batch; acked_at: null until central acknowledged the batch.
create table "readings" (
    "seq" integer primary key,
    "meter_id" text not null,
    "ts" integer not null,
    "interval_s" integer not null,
    "kwh" real not null,
    "register_kwh" real,
    "voltage_v" real,
    "current_a" real,
    "power_factor" real,
    "temperature_c" real,
    "humidity_pct" real,
    "wind_ms" real,
    "supply_on" integer not null,
    "flags" text,
    "score" real,
    "model_version" text,
    "accepted_at" real not null,
    "accept_seq" integer,
    "batch_id" text,
    "acked_at" real
);
-- No other index on readings: each one is paid on every insert of the hot path. Batches take
-- the oldest unbatched readings first, so batched readings are a prefix in seq order and a batch
-- is the seq range [first_seq, last_seq] of the batches table.
create unique index "readings_key" on "readings" ("ts", "meter_id");

create table "quarantine" (
    "id" integer primary key,
    "raw" text not null,
    "reason" text not null,
    "received_at" real not null,
    "source" text not null,
    "batch_id" text
);

-- payload: the frozen wire bytes, null once acked.
create table "batches" (
    "batch_id" text primary key,
    "seq" integer not null,
    "created_at" real not null,
    "payload" blob,
    "first_seq" integer,
    "last_seq" integer,
    "readings" integer not null,
    "quarantined" integer not null,
    "send_count" integer not null default 0,
    "first_sent_at" real,
    "last_sent_at" real,
    "acked_at" real,
    "ack_status" text,
    "ack_json" text
);
create index batches_open on batches (seq) where acked_at is null;

create table "counters" (
    "name" text primary key,
    "value" integer not null
);

create table "meta" (
    "key" text primary key,
    "value" text
);

create table "spool_files" (
    "sha256" text primary key,
    "name" text,
    "processed_at" real,
    "readings" integer,
    "quarantined" integer,
    "outcome" text
);
