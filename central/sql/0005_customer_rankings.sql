-- The inspection list: customers ranked by how likely they steal or have a faulty meter, over a
-- window of raw.readings (`python -m ml rank`). One row per run in ml.ranking_runs, one per
-- customer in ml.customer_rankings; ml.inspection_list is the newest run.
create table if not exists ml.ranking_runs (
    run_id        text        primary key,
    computed_at   timestamptz not null default now(),
    window_start  timestamptz not null,
    window_end    timestamptz not null,
    model_name    text,                                -- gateway model set whose margins it used
    model_version text,
    model_members text[]      not null default '{}',   -- its members (global + class models)
    scorer        text        not null,                -- 'peer' (unsupervised) | 'supervised'
    customers     integer     not null check (customers >= 0),
    unregistered_meters integer not null default 0     -- readings of meters not in raw.meters: left out
);

create table if not exists ml.customer_rankings (
    run_id         text             not null references ml.ranking_runs (run_id) on delete cascade,
    rank           integer          not null check (rank >= 1),
    meter_id       text             not null,
    score          double precision not null,          -- higher = inspect first
    customer_class text,
    region         text,
    transformer_id text,
    reasons        jsonb            not null default '[]'::jsonb,  -- strongest signals, named
    primary key (run_id, meter_id),
    unique (run_id, rank)
);

create index if not exists ranking_runs_computed_idx on ml.ranking_runs (computed_at desc);

create or replace view ml.inspection_list as
select r.*, run.computed_at, run.window_start, run.window_end, run.scorer
from ml.customer_rankings r
join ml.ranking_runs run using (run_id)
where run.run_id = (select run_id from ml.ranking_runs order by computed_at desc, run_id desc limit 1);
