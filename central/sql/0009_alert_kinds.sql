-- scoring_off joins the alert kinds: central raises it when a gateway's status says it scores
-- nothing (no model, or its model refused). The kinds are edge_agent.vocabulary.ALERT_KINDS.
comment on column raw.alerts.kind is
    $$Alert type: anomaly (model score above threshold), tamper (meter tamper flags), register_rollback (register below the previous reading), supply_loss, energy_balance (transformer energy not accounted for by its customers), buffer_full or scoring_off (central: the gateway scores nothing).$$;
