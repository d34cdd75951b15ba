-- v7: a batch id names one content forever, and quarantine keeps bounded copies.

-- sha256 of the batch message as central received it. A batch id delivered again with the same
-- digest is a replay (answered from here); with another digest it is a batch conflict: never
-- acknowledged as stored, quarantined, answered with a rejecting ack. Null for batches stored
-- before this column existed.
alter table raw.ingest_batches add column if not exists payload_sha256 text;
comment on column raw.ingest_batches.payload_sha256 is
    $$sha256 (hex) of the batch message as received; a known batch id with another digest is a batch conflict, never acknowledged as stored.$$;

-- Size of a message quarantined whole. Its bytes are kept in `payload` only up to the ingest's
-- quarantine_payload_max_bytes; a larger one keeps an excerpt in `raw`, its size and digest.
alter table raw.quarantine add column if not exists payload_size integer;
comment on column raw.quarantine.payload_size is
    $$Size in bytes of a message quarantined whole (its bytes are in payload only when small enough: see the ingest's quarantine_payload_max_bytes).$$;
