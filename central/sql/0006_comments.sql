-- Descriptions of the raw and ml tables, views and columns: shown by psql \d+ and BI tools, and
-- read into the generated data dictionary (docs/data-dictionary.md).
-- Not here: the fifteen reading columns of raw.readings (meter_id ... model_version). Their
-- descriptions live in edge_agent/fields.py (READING_FIELDS), the one place a reading's fields
-- are defined. Texts are dollar-quoted ($$...$$), so apostrophes need no escaping.

-- raw.readings ------------------------------------------------------------------------------

comment on table raw.readings is
    $$Meter readings stored by central ingest from readings.v1/v2 batches: one row per (meter_id, ts), the first stored value wins. A later reading with the same key and other values goes to raw.quarantine as a conflict.$$;
comment on column raw.readings.gateway_id is
    $$Gateway that sent the batch the row arrived in (batch envelope gateway_id, equal to the gateway in the MQTT topic).$$;
comment on column raw.readings.batch_id is
    $$Batch the row arrived in (batch envelope batch_id); with gateway_id, the key of its raw.ingest_batches row.$$;
comment on column raw.readings.received_at is
    $$When central stored the row, UTC: the start of the ingest transaction (now()), the same for every row of a batch. The warehouse loader reads new rows by this column.$$;

-- raw.quarantine ----------------------------------------------------------------------------

comment on table raw.quarantine is
    $$Input that could not become a reading or an alert, kept with its reason and never silently dropped: one row per invalid or conflicting reading, per quarantine record sent by an agent, and per whole message rejected at ingest.$$;
comment on column raw.quarantine.quarantine_id is
    $$Surrogate key, increasing in insertion order.$$;
comment on column raw.quarantine.raw is
    $$The offending input as text for people: the reading or input line as received, or for a whole message a printable prefix of its bytes. At most 16384 characters; NUL shown as an escape.$$;
comment on column raw.quarantine.reason is
    $$Why it was quarantined: a short code, then detail after a colon (invalid, conflict, malformed_json, unknown_schema, invalid_envelope, gateway_mismatch, oversize, ...). At most 500 characters.$$;
comment on column raw.quarantine.received_at is
    $$When the first hop received the input, UTC: the gateway clock for records quarantined by the agent, central ingest time for input quarantined centrally.$$;
comment on column raw.quarantine.stored_at is
    $$When the row was written to PostgreSQL, UTC (now() at insert). The warehouse loader reads new rows by this column.$$;
comment on column raw.quarantine.source is
    $$Where the input came from: mqtt:<topic> for anything quarantined by central ingest; for records quarantined by the agent, its intake source (e.g. sim, or a spool file with :<line>).$$;
comment on column raw.quarantine.gateway_id is
    $$Gateway of the message it arrived in (from the MQTT topic or the batch envelope); null when none could be read and for rejected status messages.$$;
comment on column raw.quarantine.batch_id is
    $$Batch it arrived in (batch envelope batch_id); null when no valid batch id could be read, and for alert and status messages.$$;
comment on column raw.quarantine.payload_sha256 is
    $$SHA-256 (hex) of the complete original message, set only for whole messages quarantined at ingest. Unique: the same bad message resent is stored once. Null for single readings and agent records.$$;
comment on column raw.quarantine.payload is
    $$The complete original message bytes as received (wire encoding, possibly zlib-compressed), set only for whole messages quarantined at ingest, so a rejected batch's readings can be recovered. Null otherwise.$$;

-- raw.ingest_batches ------------------------------------------------------------------------

comment on table raw.ingest_batches is
    $$Batch ledger written by central ingest: one row per (gateway_id, batch_id) ever received, with its counts and the ack.v1 sent. A batch delivered again is answered from here with the same ack and not stored twice.$$;
comment on column raw.ingest_batches.gateway_id is
    $$Gateway that sent the batch (batch envelope gateway_id, equal to the gateway in the MQTT topic).$$;
comment on column raw.ingest_batches.batch_id is
    $$Batch id chosen by the gateway (batch envelope batch_id); unique per gateway.$$;
comment on column raw.ingest_batches.batch_seq is
    $$The gateway's batch sequence number (batch envelope batch_seq, >= 0); -1 for a rejected message.$$;
comment on column raw.ingest_batches.sent_at is
    $$When the gateway sent the batch, UTC (batch envelope sent_at); for a rejected message, the time central received it.$$;
comment on column raw.ingest_batches.stored_at is
    $$When central recorded the batch, UTC (now() at insert).$$;
comment on column raw.ingest_batches.readings is
    $$Number of readings the batch carried (n for readings.v2, the length of readings for v1); 0 for a rejected message.$$;
comment on column raw.ingest_batches.inserted is
    $$Readings of the batch newly inserted into raw.readings.$$;
comment on column raw.ingest_batches.duplicates is
    $$Readings already stored with the same measured values (resends): counted, not stored again.$$;
comment on column raw.ingest_batches.conflicts is
    $$Readings whose (meter_id, ts) was already stored with other values: sent to raw.quarantine with reason conflict.$$;
comment on column raw.ingest_batches.quarantined is
    $$Rows the batch added to raw.quarantine: invalid readings, the agent's own quarantine records and conflicts; 1 for a rejected message (the message itself).$$;
comment on column raw.ingest_batches.status is
    $$stored (the batch was processed, even if some readings were quarantined) or rejected (the whole message was quarantined).$$;
comment on column raw.ingest_batches.ack is
    $$The ack.v1 message sent back to the gateway, as JSON (status, counts, reason); sent again verbatim when the batch is delivered again.$$;

-- raw.gateway_status ------------------------------------------------------------------------

comment on table raw.gateway_status is
    $$Gateway health from status.v1 messages (retained on {root}/gw/<gateway_id>/status), stored by central ingest: one row per (gateway_id, sent_at), so history is kept; the newest sent_at is the current state.$$;
comment on column raw.gateway_status.gateway_id is
    $$Gateway the status is about (status.v1 gateway_id, equal to the gateway in the MQTT topic).$$;
comment on column raw.gateway_status.sent_at is
    $$When the gateway made the status, UTC (status.v1 sent_at); an offline last will carries the time it was set at agent start-up. A status delivered again is stored once.$$;
comment on column raw.gateway_status.received_at is
    $$When central stored the status, UTC (now() at insert).$$;
comment on column raw.gateway_status.state is
    $$online, or offline (clean shutdown, or the last will the broker publishes when the gateway drops off); status.v1 state.$$;
comment on column raw.gateway_status.status is
    $$The whole status.v1 message as JSON: agent_version, buffer (pending readings, in-flight batches, oldest pending ts, full), last_ack_at, counters, models in use, model_error.$$;

-- raw.grid_assets ---------------------------------------------------------------------------

comment on table raw.grid_assets is
    $$Registry of grid assets: regions, feeders and distribution transformers, one row per asset, forming a tree through parent_id. Upserted from the utility registry (python -m simulator registry here), not from the wire.$$;
comment on column raw.grid_assets.asset_id is
    $$Asset identifier; referenced by parent_id and by raw.meters transformer_id, feeder_id and region.$$;
comment on column raw.grid_assets.asset_type is
    $$region, feeder or transformer.$$;
comment on column raw.grid_assets.parent_id is
    $$The asset one level up: a feeder's region, a transformer's feeder; null for regions.$$;
comment on column raw.grid_assets.name is
    $$Human-readable name; may be null.$$;
comment on column raw.grid_assets.rated_kva is
    $$Rated power of a transformer, kVA; null for regions and feeders.$$;
comment on column raw.grid_assets.latitude is
    $$Latitude, decimal degrees (WGS84); null when unknown.$$;
comment on column raw.grid_assets.longitude is
    $$Longitude, decimal degrees (WGS84); null when unknown.$$;
comment on column raw.grid_assets.updated_at is
    $$When the row was last inserted or updated, UTC (set by the registry upsert). The warehouse loader reads changes by this column.$$;

-- raw.meters --------------------------------------------------------------------------------

comment on table raw.meters is
    $$Registry of meters, one row per meter_id: customer meters and transformer supply meters. Upserted from the utility registry (python -m simulator registry here), not from the wire; meters missing here are left out of the customer rankings.$$;
comment on column raw.meters.meter_id is
    $$Meter identifier, as in raw.readings.meter_id.$$;
comment on column raw.meters.meter_role is
    $$customer (a consumer's meter) or transformer (the supply meter of a distribution transformer, used for energy balance).$$;
comment on column raw.meters.customer_class is
    $$Customer class (e.g. residential_urban, commercial): selects the per-class anomaly model and the peer group in rankings; null for transformer meters.$$;
comment on column raw.meters.tariff is
    $$prepaid or postpaid; null for transformer meters or when unknown.$$;
comment on column raw.meters.transformer_id is
    $$Distribution transformer supplying the meter (for a transformer meter, the one it measures); raw.grid_assets.asset_id, null when unknown.$$;
comment on column raw.meters.feeder_id is
    $$Feeder the meter is on; raw.grid_assets.asset_id, null when unknown.$$;
comment on column raw.meters.region is
    $$Region the meter is in: the asset_id of a region in raw.grid_assets (not enforced by a foreign key).$$;
comment on column raw.meters.latitude is
    $$Latitude, decimal degrees (WGS84); null when unknown.$$;
comment on column raw.meters.longitude is
    $$Longitude, decimal degrees (WGS84); null when unknown.$$;
comment on column raw.meters.gateway_id is
    $$Gateway that reads the meter (as in raw.readings.gateway_id; not enforced by a foreign key).$$;
comment on column raw.meters.installed_at is
    $$When the meter was installed, UTC; null when unknown.$$;
comment on column raw.meters.updated_at is
    $$When the row was last inserted or updated, UTC (set by the registry upsert). The warehouse loader reads changes by this column.$$;

-- raw.alerts --------------------------------------------------------------------------------

comment on table raw.alerts is
    $$Alerts raised by the gateways (alert.v1 on {root}/gw/<gateway_id>/alerts), stored by central ingest: one row per alert_id; a resent alert is a no-op.$$;
comment on column raw.alerts.alert_id is
    $$Deterministic id: the first 32 hex digits of a SHA-256 over kind, meter_id, ts and basis (model name:version for anomaly alerts), so the same reading and model always give the same id.$$;
comment on column raw.alerts.gateway_id is
    $$Gateway that raised the alert (alert.v1 gateway_id, equal to the gateway in the MQTT topic).$$;
comment on column raw.alerts.meter_id is
    $$Meter the alert is about; for energy_balance, the transformer supply meter.$$;
comment on column raw.alerts.ts is
    $$End of the interval of the reading the alert is about, UTC (matches raw.readings.ts); for energy_balance, the end of the balance window.$$;
comment on column raw.alerts.kind is
    $$Alert type: anomaly (model score above threshold), tamper (meter tamper flags), register_rollback (register below the previous reading), supply_loss, energy_balance (transformer energy not accounted for by its customers) or buffer_full.$$;
comment on column raw.alerts.score is
    $$anomaly: the model's score of the reading; energy_balance: the unaccounted share of the energy supplied. Null for rule alerts.$$;
comment on column raw.alerts.threshold is
    $$The value score exceeded to raise the alert (the model threshold, or the allowed unaccounted share); null for rule alerts.$$;
comment on column raw.alerts.model_version is
    $$Version of the model that scored the reading (anomaly alerts); null otherwise.$$;
comment on column raw.alerts.features is
    $$JSON object of the named numbers behind the alert: the reading's model features, or for energy_balance the energy figures in kWh (supplied, billed, expected loss, gap); {} when none.$$;
comment on column raw.alerts.detail is
    $$Short human-readable explanation written by the gateway, at most 500 characters; may be null.$$;
comment on column raw.alerts.received_at is
    $$When central stored the alert, UTC (now() at insert). The warehouse loader reads new alerts by this column.$$;

-- ml.models ---------------------------------------------------------------------------------

comment on table ml.models is
    $$Registry of gateway anomaly models, filled by python -m ml publish (ml/registry.py): one row per (name, version), immutable once registered; each row keeps the signed model.v1 message published retained to the gateways.$$;
comment on column ml.models.name is
    $$Model name (model.v1 name; topic {root}/models/<name>): the set name (e.g. iforest) for the global model, <set name>.<customer_class> for a class model.$$;
comment on column ml.models.version is
    $$Version of the model set (model.v1 version), shared by all members of the set.$$;
comment on column ml.models.customer_class is
    $$Customer class the model scores; null for the global model, used for every meter without a class model of its own.$$;
comment on column ml.models.variant is
    $$Variant of the set the model was published in: global (one model for every meter) or per_class (class models plus a global fallback).$$;
comment on column ml.models.created_at is
    $$When the model set was trained, UTC, as signed in the model.v1 message.$$;
comment on column ml.models.registered_at is
    $$When the row was inserted, UTC.$$;
comment on column ml.models.published_at is
    $$Last time the model was published retained to the broker, UTC; null until first published.$$;
comment on column ml.models.topic is
    $$MQTT topic it was last published on ({root}/models/<name>); null until first published.$$;
comment on column ml.models.sha256 is
    $$SHA-256 (hex) of the ONNX model bytes, as signed in the message.$$;
comment on column ml.models.feature_names is
    $$Reading features the model takes, in input order (edge_agent.features.FEATURE_NAMES when trained).$$;
comment on column ml.models.threshold is
    $$Alert threshold: the gateway raises an anomaly alert when a reading's score is above it.$$;
comment on column ml.models.score_offset is
    $$scikit-learn IsolationForest offset_ of the fitted model (normally -threshold).$$;
comment on column ml.models.threshold_method is
    $$How the threshold was chosen, in words (e.g. a quantile of training scores, or max F1 on labelled rows under a false-alarm cap).$$;
comment on column ml.models.train_start is
    $$Start of the training window of readings, UTC.$$;
comment on column ml.models.train_end is
    $$End of the training window of readings, UTC.$$;
comment on column ml.models.train_rows is
    $$Number of readings the model was fitted on.$$;
comment on column ml.models.metrics is
    $$JSON: the model's evaluation metrics, plus validation: the set-level comparison of variants (criterion, results, chosen).$$;
comment on column ml.models.training is
    $$JSON: how the set was trained: data source, window, customers, fit meters, whether labelled, sampling and threshold parameters, seed.$$;
comment on column ml.models.message is
    $$The signed model.v1 message verbatim, including the base64 ONNX model and the Ed25519 signature; republishing sends exactly this.$$;

-- ml.ranking_runs ---------------------------------------------------------------------------

comment on table ml.ranking_runs is
    $$One row per run of python -m ml rank (ml/ranking.py): a ranking of customers for inspection over a window of raw.readings; its rows are in ml.customer_rankings.$$;
comment on column ml.ranking_runs.run_id is
    $$Run id: the UTC time of the run (YYYYMMDDTHHMMSSZ) and a random hex suffix.$$;
comment on column ml.ranking_runs.computed_at is
    $$When the run was stored, UTC (now() at insert); the newest run is ml.inspection_list.$$;
comment on column ml.ranking_runs.window_start is
    $$Start of the ranked window, UTC: the start of its first interval (older readings serve only as feature history).$$;
comment on column ml.ranking_runs.window_end is
    $$End of the ranked window, UTC: the ts of its newest reading.$$;
comment on column ml.ranking_runs.model_name is
    $$Gateway model set whose score margins fed the ranking (ml.models name of its global member); null when no model was published (margins then count as 0).$$;
comment on column ml.ranking_runs.model_version is
    $$Version of that model set (ml.models version); null when no model was used.$$;
comment on column ml.ranking_runs.model_members is
    $$ml.models names of the set's members used (the global and the class models); empty when no model was used.$$;
comment on column ml.ranking_runs.scorer is
    $$Customer scorer: peer (unsupervised, needs no labels) or supervised.$$;
comment on column ml.ranking_runs.customers is
    $$Number of customers ranked (rows of this run in ml.customer_rankings).$$;
comment on column ml.ranking_runs.unregistered_meters is
    $$Meters with readings in the window but missing from raw.meters: left out of the ranking, counted here.$$;

-- ml.customer_rankings ----------------------------------------------------------------------

comment on table ml.customer_rankings is
    $$Customers ranked for inspection (likely theft or a faulty meter) by python -m ml rank: one row per (run_id, meter_id); rank 1 is inspected first.$$;
comment on column ml.customer_rankings.run_id is
    $$The run (ml.ranking_runs.run_id); rows are deleted with their run.$$;
comment on column ml.customer_rankings.rank is
    $$Position in the run, 1 = highest score; unique within a run.$$;
comment on column ml.customer_rankings.meter_id is
    $$Customer meter (raw.meters.meter_id).$$;
comment on column ml.customer_rankings.score is
    $$Suspicion score, higher = inspect first; comparable within a run only. Peer scorer: sum of the customer's signals as robust z-scores across customers, each counted only in its suspicious direction and capped at 20.$$;
comment on column ml.customer_rankings.customer_class is
    $$Customer class, copied from raw.meters at run time.$$;
comment on column ml.customer_rankings.region is
    $$Region, copied from raw.meters at run time.$$;
comment on column ml.customer_rankings.transformer_id is
    $$Supplying transformer, copied from raw.meters at run time.$$;
comment on column ml.customer_rankings.reasons is
    $$JSON array of up to 3 strongest signals, strongest first, each {signal, z, value}: signal name, its contribution to score, the customer's value of it. [] when no signal points to suspicion.$$;

-- ml.inspection_list ------------------------------------------------------------------------

comment on view ml.inspection_list is
    $$The inspection list dashboards read: the rows of the newest ranking run (latest computed_at in ml.ranking_runs) with that run's window and scorer; one row per customer (the view has no order: sort by rank).$$;
comment on column ml.inspection_list.run_id is
    $$The newest run (ml.ranking_runs.run_id).$$;
comment on column ml.inspection_list.rank is
    $$Position in the run, 1 = inspect first.$$;
comment on column ml.inspection_list.meter_id is
    $$Customer meter (raw.meters.meter_id).$$;
comment on column ml.inspection_list.score is
    $$Suspicion score, higher = inspect first (see ml.customer_rankings.score).$$;
comment on column ml.inspection_list.customer_class is
    $$Customer class, copied from raw.meters at run time.$$;
comment on column ml.inspection_list.region is
    $$Region, copied from raw.meters at run time.$$;
comment on column ml.inspection_list.transformer_id is
    $$Supplying transformer, copied from raw.meters at run time.$$;
comment on column ml.inspection_list.reasons is
    $$JSON array of up to 3 strongest signals, each {signal, z, value} (see ml.customer_rankings.reasons).$$;
comment on column ml.inspection_list.computed_at is
    $$When the run was stored, UTC.$$;
comment on column ml.inspection_list.window_start is
    $$Start of the ranked window, UTC.$$;
comment on column ml.inspection_list.window_end is
    $$End of the ranked window, UTC: the ts of its newest reading.$$;
comment on column ml.inspection_list.scorer is
    $$Customer scorer of the run: peer (unsupervised) or supervised.$$;
