-- v4: a spool file is taken a slice at a time (bounded memory whatever its size); the ledger row
-- says how many of its records are committed, so a power cut mid-file resumes after them.
-- outcome: 'partial' while slices remain, then 'done' or 'failed'.
alter table spool_files add column "records_done" integer not null default 0;
