-- disk_full and clock_suspect join the alert kinds: a gateway whose disk is (nearly) full pauses
-- its intake and says so, as buffer_full says its buffer reached its byte budget; a gateway
-- whose wall clock stepped, or is behind the latest time it has seen, says so. The kinds are
-- edge_agent.vocabulary.ALERT_KINDS.
comment on column raw.alerts.kind is
    $$Alert type: anomaly (model score above threshold), tamper (meter tamper flags), register_rollback (register below the previous reading), supply_loss, energy_balance (transformer energy not accounted for by its customers), buffer_full (the gateway's buffer reached its byte budget: intake paused), disk_full (the gateway's disk is nearly full: intake paused), clock_suspect (the gateway's wall clock stepped or went back) or scoring_off (central: the gateway scores nothing).$$;
comment on column raw.gateway_status.received_at is
    $$When central stored the status, UTC (central's clock). The newest status of a gateway is the one received last: the gateway's own sent_at may be far off (no RTC, a clock before NTP).$$;
comment on table raw.gateway_status is
    $$Gateway health from status.v1 messages (retained on {root}/gw/<gateway_id>/status), stored by central ingest: one row per (gateway_id, sent_at), so history is kept; the one received last (received_at) is the current state.$$;
