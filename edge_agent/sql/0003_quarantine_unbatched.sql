-- v3: quarantine rows waiting for a batch are looked up on every sync tick.
create index quarantine_unbatched on quarantine (id) where batch_id is null;
