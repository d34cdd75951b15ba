-- Quarantine reasons are a kind from one vocabulary (edge_agent/vocabulary.py,
-- QUARANTINE_REASONS), alone or followed by ': ' and details.
comment on column raw.quarantine.reason is
    $$Why it was quarantined: a kind (edge_agent/vocabulary.py QUARANTINE_REASONS, listed with their meanings in docs/data-dictionary.md), alone or followed by ': ' and details. At most 500 characters.$$;
