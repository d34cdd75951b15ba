-- Alerts raised by the gateways' models and rules (alert.v1), kept for analysis and the marts.
-- alert_id is deterministic (same reading + model → same id): storing it twice is a no-op.
create table if not exists raw.alerts (
    alert_id      text        primary key,
    gateway_id    text        not null,
    meter_id      text        not null,
    ts            timestamptz not null,            -- the reading the alert is about
    kind          text        not null,            -- anomaly, tamper, register_rollback, ...
    score         double precision,
    threshold     double precision,
    model_version text,
    features      jsonb       not null default '{}'::jsonb,
    detail        text,
    received_at   timestamptz not null default now()
);
-- The warehouse loader reads alerts by arrival.
create index if not exists alerts_received_at_idx on raw.alerts (received_at);
create index if not exists alerts_meter_ts_idx on raw.alerts (meter_id, ts);
