-- A meter's local clock: the features of its readings (time of day, evening, night, calendar
-- days) are computed in this zone, at the gateway and in training. Null: the gateway's zone.
alter table raw.meters add column if not exists timezone text;
comment on column raw.meters.timezone is
    $$IANA time zone of the meter's local clock (Africa/Lagos); null means its gateway's zone. Time-of-day and calendar-day features use it.$$;
