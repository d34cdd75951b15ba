-- The schema of a v3 gateway buffer exactly as the agents before v4 created it (with sqlite-utils):
-- tests/test_buffer.py checks a buffer made from it migrates to the schema of a fresh buffer.
CREATE TABLE "readings" (
   "seq" INTEGER PRIMARY KEY,
   "meter_id" TEXT NOT NULL,
   "ts" INTEGER NOT NULL,
   "interval_s" INTEGER NOT NULL,
   "kwh" REAL NOT NULL,
   "register_kwh" REAL,
   "voltage_v" REAL,
   "current_a" REAL,
   "power_factor" REAL,
   "temperature_c" REAL,
   "humidity_pct" REAL,
   "wind_ms" REAL,
   "supply_on" INTEGER NOT NULL,
   "flags" TEXT,
   "score" REAL,
   "model_version" TEXT,
   "accepted_at" REAL NOT NULL,
   "accept_seq" INTEGER,
   "batch_id" TEXT,
   "acked_at" REAL
);
CREATE UNIQUE INDEX "readings_key"
    ON "readings" ("ts", "meter_id");
CREATE TABLE "quarantine" (
   "id" INTEGER PRIMARY KEY,
   "raw" TEXT NOT NULL,
   "reason" TEXT NOT NULL,
   "received_at" REAL NOT NULL,
   "source" TEXT NOT NULL,
   "batch_id" TEXT
);
CREATE TABLE "batches" (
   "batch_id" TEXT PRIMARY KEY,
   "seq" INTEGER NOT NULL,
   "created_at" REAL NOT NULL,
   "payload" BLOB,
   "first_seq" INTEGER,
   "last_seq" INTEGER,
   "readings" INTEGER NOT NULL,
   "quarantined" INTEGER NOT NULL,
   "send_count" INTEGER NOT NULL DEFAULT 0,
   "first_sent_at" REAL,
   "last_sent_at" REAL,
   "acked_at" REAL,
   "ack_status" TEXT,
   "ack_json" TEXT
);
CREATE INDEX batches_open on batches (seq) where acked_at is null;
CREATE TABLE "counters" (
   "name" TEXT PRIMARY KEY,
   "value" INTEGER NOT NULL
);
CREATE TABLE "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
CREATE TABLE "spool_files" (
   "sha256" TEXT PRIMARY KEY,
   "name" TEXT,
   "processed_at" REAL,
   "readings" INTEGER,
   "quarantined" INTEGER,
   "outcome" TEXT
);
CREATE TABLE "alerts" (
   "alert_id" TEXT PRIMARY KEY,
   "kind" TEXT NOT NULL,
   "meter_id" TEXT NOT NULL,
   "ts" INTEGER NOT NULL,
   "payload" TEXT NOT NULL,
   "created_at" REAL NOT NULL,
   "attempts" INTEGER NOT NULL DEFAULT 0,
   "last_sent_at" REAL,
   "acked_at" REAL
);
CREATE INDEX alerts_unacked on alerts (created_at) where acked_at is null;
CREATE INDEX "alerts_meter"
    ON "alerts" ("meter_id", "kind", "ts");
CREATE TABLE "models" (
   "id" INTEGER PRIMARY KEY,
   "name" TEXT NOT NULL,
   "version" TEXT NOT NULL,
   "created_at" TEXT NOT NULL,
   "sha256" TEXT NOT NULL,
   "message" TEXT NOT NULL,
   "accepted_at" REAL NOT NULL,
   "public_key_sha256" TEXT
);
CREATE INDEX quarantine_unbatched on quarantine (id) where batch_id is null;
