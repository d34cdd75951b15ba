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
