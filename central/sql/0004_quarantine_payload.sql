-- A message quarantined whole (undecodable, wrong schema, rejected batch) keeps its exact bytes:
-- `raw` holds a printable prefix for people, `payload` the complete original for recovery.
alter table raw.quarantine add column if not exists payload bytea;
