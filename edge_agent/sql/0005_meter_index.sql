-- v5: readings by meter and time, for the features' history of an intake call that holds a few
-- meters: with only (ts, meter_id), such a call scans the week of the whole gateway (about ten
-- times slower at 1,000 meters). Paid on every insert: the bulk intake is several times slower,
-- still far faster than scoring takes readings (bench.buffer, bench.intake).
create index "readings_meter_ts" on "readings" ("meter_id", "ts");
