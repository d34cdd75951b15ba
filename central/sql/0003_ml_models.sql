-- Model registry: every gateway model version ever published (ml.registry, `python -m ml publish`).
-- (name, version) is immutable: publishing the same version again re-sends the stored, signed
-- message; a different model under an existing version is refused.
create schema if not exists ml;

create table if not exists ml.models (
    name             text        not null,            -- model.v1 name; topic {root}/models/{name}
    version          text        not null,
    customer_class   text,                            -- null: one model for every meter
    variant          text        not null default 'global'
                                 check (variant in ('global', 'per_class')),
    created_at       timestamptz not null,            -- as signed in the message
    registered_at    timestamptz not null default now(),
    published_at     timestamptz,                     -- last time it went out retained
    topic            text,
    sha256           text        not null check (sha256 ~ '^[0-9a-f]{64}$'),
    feature_names    text[]      not null,
    threshold        double precision not null,       -- alert when score > threshold
    score_offset     double precision not null,       -- scikit-learn offset_ (= -threshold)
    threshold_method text,
    train_start      timestamptz,                     -- training window (readings scored)
    train_end        timestamptz,
    train_rows       bigint,
    metrics          jsonb       not null default '{}'::jsonb,
    training         jsonb       not null default '{}'::jsonb,   -- source, sizes, parameters
    message          jsonb       not null,            -- the signed model.v1 message, verbatim
    primary key (name, version)
);
create index if not exists models_name_created_idx on ml.models (name, created_at desc);
