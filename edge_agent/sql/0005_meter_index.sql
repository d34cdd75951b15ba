-- v5: readings by meter and time, for the features' history of an intake call that holds a few
-- meters: with only (ts, meter_id), such a call scanned the week of the whole gateway (one reading
-- at 1,000 meters: 70 ms a call; with this index: 7 ms). Paid on every insert: the bulk column
-- path measured 88,000 -> 26,000 readings/s, the per-reading path ~43,000 -> ~34,000-42,000,
-- both far above what scoring takes (~1,200 readings/s at 1,000 meters).
create index "readings_meter_ts" on "readings" ("meter_id", "ts");
