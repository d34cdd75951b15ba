-- disk_full joins the alert kinds: a gateway whose disk is (nearly) full pauses its intake and
-- says so, as buffer_full says its buffer reached its byte budget. The kinds are
-- edge_agent.vocabulary.ALERT_KINDS.
comment on column raw.alerts.kind is
    $$Alert type: anomaly (model score above threshold), tamper (meter tamper flags), register_rollback (register below the previous reading), supply_loss, energy_balance (transformer energy not accounted for by its customers), buffer_full (the gateway's buffer reached its byte budget: intake paused), disk_full (the gateway's disk is nearly full: intake paused) or scoring_off (central: the gateway scores nothing).$$;
