-- A meter's local clock: the features of its readings (time of day, evening, night, calendar
-- days) are computed in this zone, at the gateway and in training. Null: the gateway's zone.
alter table raw.meters add column if not exists timezone text;
comment on column raw.meters.timezone is
    $$IANA time zone of the meter's local clock (Africa/Lagos); null means its gateway's zone (its timezone setting, reported in status.v1). Time-of-day and calendar-day features use it.$$;
-- ml/dataset.py falls back on the zone a meter's gateway reports in status.v1 (its timezone
-- setting), the zone the gateway scores that meter in.
grant select on raw.gateway_status to eiot_ml;

-- Models from ml are calibrated (ml/calibration.py): their score and threshold are levels among
-- the model's normal training readings; score_offset keeps the raw IsolationForest threshold
-- (the readings' score column is described in edge_agent/fields.py).
comment on column ml.models.threshold is
    $$Alert threshold on the model's score (a level in 0..1 for calibrated models): the gateway raises an anomaly alert when a reading's score is above it.$$;
comment on column ml.models.score_offset is
    $$scikit-learn IsolationForest offset_ of the fitted model: minus the threshold as a raw anomaly score (for a calibrated model, before its calibration).$$;
