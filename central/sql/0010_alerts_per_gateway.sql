-- An alert is what one gateway says: its id is unique per gateway. Alert ids are predictable
-- (edge_agent.alerts.alert_id), so with the id alone as the key a gateway that sent another
-- gateway's ids first had that gateway's real alerts dropped as duplicates, and could do the
-- same to the scoring_off alert central raises for it.
alter table raw.alerts drop constraint if exists alerts_pkey;
alter table raw.alerts add primary key (gateway_id, alert_id);
-- ON CONFLICT (gateway_id, alert_id) reads both key columns (see 0008_roles.sql).
grant select (gateway_id) on raw.alerts to eiot_ingest;
comment on table raw.alerts is
    $$Alerts raised by the gateways (alert.v1 on {root}/gw/<gateway_id>/alerts) and by central (scoring_off), stored by central ingest: one row per gateway and alert_id; a resent alert is a no-op.$$;
comment on column raw.alerts.alert_id is
    $$Deterministic id: the first 32 hex digits of a SHA-256 over kind, meter_id, ts and basis (model name:version for anomaly alerts), so the same reading and model always give the same id; unique per gateway.$$;
