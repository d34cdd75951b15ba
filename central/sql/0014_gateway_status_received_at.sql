-- The exporter (central metrics serve) reads the statuses received since its last poll, and at
-- start the one received last of each gateway: both by received_at.
create index if not exists gateway_status_received_at_idx
    on raw.gateway_status (gateway_id, received_at);
create index if not exists gateway_status_received_idx on raw.gateway_status (received_at);
