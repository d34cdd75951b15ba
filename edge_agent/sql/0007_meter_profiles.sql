-- v7: each meter's long memory (edge_agent.long_memory): per local hour, the decayed sum of the
-- power of its valid readings and their decayed count (24 float64 each, little-endian), after
-- folding in every local day up to through_day. Written in the transaction of the readings that
-- moved it; about 420 bytes a meter.
create table "meter_profiles" (
    "meter_id" text primary key,
    "through_day" integer not null,
    "sums" blob not null check (length("sums") = 192),
    "weights" blob not null check (length("weights") = 192)
);
