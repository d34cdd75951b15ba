-- v6: the sha256 of each batch's frozen payload. An ack.v2 names the digest of the message it
-- answers: an ack for other bytes under this batch id is not applied. A batch id that central
-- knows with other content (a stale copy of this buffer reused it) is answered with a
-- batch_conflict: the batch's readings are queued again under a new incarnation.
alter table batches add column "payload_sha256" text;
