-- Disk per stored telemetry report on TimescaleDB, uncompressed and compressed
-- (docs/operations.md, "Disk per day"). Run against a freshly migrated Watchfloor database
-- on a server with TimescaleDB (timescale license):
--   watchfloor db migrate && psql "$WATCHFLOOR_DATABASE_URL" -f bench/disk_per_day.sql
-- It writes 1 hour of 500 units at 1 Hz (1.8 million reports, a day ago: younger than any
-- compression or retention policy acts on), measures, compresses them and measures again.
-- The values move as a shift's do: battery down, storage up, a walk around London with
-- a GPS fix's noise, recording now and then.
\timing on
INSERT INTO devices (device_id) SELECT format('cam-%s', d) FROM generate_series(1, 500) d;
INSERT INTO telemetry (device_id, ts, seq, received_at, battery_pct, charging, battery_temp_c,
                       lat, lon, accuracy_m, speed_mps, heading_deg, recording, storage_pct,
                       docked, firmware, live, viewers)
SELECT format('cam-%s', d), t, s, t + interval '40 ms',
       90 - s / 400.0, false, 31 + (s % 7) / 10.0,
       51.5 + d / 5000.0 + s / 400000.0 + random() / 20000, -0.12 + d / 4000.0 + s / 500000.0 + random() / 20000,
       round((4 + random() * 6)::numeric, 1), round((random() * 2)::numeric, 2), (d * 7 + s / 30) % 360,
       CASE WHEN (d + s / 600) % 9 = 0 THEN 'recording' ELSE 'buffering' END, 20 + s / 1800.0,
       false, '4.2.1', false, 0
FROM generate_series(1, 500) d,
     generate_series(0, 3599) s,
     LATERAL (SELECT date_trunc('hour', now() - interval '1 day') + s * interval '1 second' AS t) x;
SELECT count(*) AS rows FROM telemetry;
SELECT pg_size_pretty(hypertable_size('telemetry')) AS uncompressed, hypertable_size('telemetry') AS bytes,
       hypertable_size('telemetry')::float / (SELECT count(*) FROM telemetry) AS bytes_per_row;
SELECT count(compress_chunk(c)) FROM show_chunks('telemetry') c;
SELECT pg_size_pretty(hypertable_size('telemetry')) AS compressed, hypertable_size('telemetry') AS bytes,
       hypertable_size('telemetry')::float / (SELECT count(*) FROM telemetry) AS bytes_per_row;
SELECT * FROM hypertable_compression_stats('telemetry');
