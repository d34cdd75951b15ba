-- v2: the alerts outbox and the accepted anomaly models.

-- An alert is committed here in the same transaction as the reading it is about, then published
-- QoS1 until the broker's PUBACK; a restart re-publishes what was not acked. alert_id is
-- deterministic (the same reading and model give the same id); ts is the reading's (or the
-- energy-balance window's) end, epoch seconds; payload the alert.v1 JSON, frozen when raised.
create table "alerts" (
    "alert_id" text primary key,
    "kind" text not null,
    "meter_id" text not null,
    "ts" integer not null,
    "payload" text not null,
    "created_at" real not null,
    "attempts" integer not null default 0,
    "last_sent_at" real,
    "acked_at" real
);
create index alerts_unacked on alerts (created_at) where acked_at is null;
create index "alerts_meter" on "alerts" ("meter_id", "kind", "ts");

-- Accepted model.v1 messages (as received), newest last; the agent verifies the newest of each
-- name again at start (the configured public key may have changed since).
create table "models" (
    "id" integer primary key,
    "name" text not null,
    "version" text not null,
    "created_at" text not null,
    "sha256" text not null,
    "message" text not null,
    "accepted_at" real not null,
    "public_key_sha256" text
);
