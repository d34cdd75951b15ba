-- A customer meter's load shape (edge_agent/vocabulary.py LOAD_SHAPES) chooses the anomaly forests
-- that score it (edge_agent/registry.py model_keys); ml/dataset.py reads it for training. It is
-- installation data or a central decision over months of the meter's history (ml/load_shape.py),
-- pinned here: never decided from the readings being scored, which a thief controls.
alter table raw.meters add column if not exists load_shape text
    check (load_shape in ('continuous', 'intermittent'));
comment on column raw.meters.load_shape is
    $$Load shape of a customer meter: intermittent (mostly near zero, blocks at an appliance's power) or continuous; null means continuous. Selects the anomaly forests that score the meter; set from installation data or a central decision over months of history, never from the readings being scored.$$;

-- Model sets carry forests per load shape: their members are named after the shape too.
comment on column ml.models.name is
    $$Model name (model.v1 name; topic {root}/models/<name>): the set name (e.g. iforest) for the global model, <set name>.<customer_class> for a class model, <set name>.intermittent and <set name>.<customer_class>.intermittent for the models of intermittent meters (raw.meters.load_shape).$$;
comment on column ml.models.customer_class is
    $$Customer class the model scores; null for the global model and for the one of every class's intermittent meters, used for every meter without a model of its own.$$;
comment on column ml.models.variant is
    $$Variant of the set the model was published in: global (one model for every meter, and one for every intermittent meter when the set has them) or per_class (class models plus a global fallback).$$;
