-- Model lifecycle decisions (ml.lifecycle, DAG model_lifecycle): every candidate the lifecycle
-- trains is registered, published or not; the decision, when, why, and both models' held-out
-- metrics are kept on its row. A rollback is a new row (the previous model re-signed).
alter table ml.models
    add column if not exists decision text
        check (decision in ('published', 'refused', 'rollback'));
alter table ml.models add column if not exists decided_at timestamptz;
alter table ml.models add column if not exists decision_reason text;
-- {"candidate": {...}, "in_service": {...} | null, "holdout": {...}}
alter table ml.models add column if not exists evaluation jsonb;
create index if not exists models_decided_idx on ml.models (decided_at desc)
    where decided_at is not null;

comment on column ml.models.decision is
    $$Model lifecycle decision on this version (ml/lifecycle.py, DAG model_lifecycle): published (not worse than the model in service on the held-out days), refused (worse: registered, never published) or rollback (the previous model re-signed and published again); null for models published by hand.$$;
comment on column ml.models.decided_at is
    $$When the lifecycle decided (the DAG runs at most once per EIOT_LIFECYCLE_MIN_HOURS after the last decision).$$;
comment on column ml.models.decision_reason is
    $$Why: the metrics compared and the rule applied, or the reason given to model_rollback.$$;
comment on column ml.models.evaluation is
    $$Held-out evaluation behind the decision: candidate and in_service metrics (alert_rate, readings; pr_auc and roc_auc with ground truth), the hold-out window and the rule's settings; for a rollback, the versions rolled_back and restored.$$;
