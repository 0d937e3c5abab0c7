"""Migration 1: the telemetry tables, and how they are partitioned (hypertables on
TimescaleDB, daily ``PARTITION BY RANGE`` with its helper functions on plain PostgreSQL).
"""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import TIME_PARTITIONED, Retention

__all__ = ["apply"]

_CORE = """
CREATE TABLE devices (
    device_id       text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    callsign        text,
    officer         text,
    borough         text,
    role            text NOT NULL DEFAULT 'response',
    profile         text NOT NULL DEFAULT 'standard',
    auto_registered boolean NOT NULL DEFAULT false,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz
);
CREATE INDEX devices_borough_role ON devices (borough, role);

CREATE TABLE telemetry (
    device_id      text NOT NULL,
    ts             timestamptz NOT NULL,
    seq            bigint NOT NULL,
    received_at    timestamptz NOT NULL,
    battery_pct    real NOT NULL,
    charging       boolean NOT NULL,
    battery_temp_c real,
    lat            double precision,
    lon            double precision,
    accuracy_m     real,
    speed_mps      real,
    heading_deg    real,
    recording      text NOT NULL,
    storage_pct    real,
    docked         boolean,
    firmware       text,
    live           boolean NOT NULL,
    viewers        smallint NOT NULL,
    PRIMARY KEY (device_id, ts, seq)
) {partitioning};

CREATE TABLE device_events (
    device_id   text NOT NULL,
    ts          timestamptz NOT NULL,
    seq         bigint NOT NULL,
    received_at timestamptz NOT NULL,
    type        text NOT NULL,
    details     jsonb,
    PRIMARY KEY (device_id, ts, seq)
) {partitioning};

-- One row per device: the control room's first paint reads this, never the history.
-- lat/lon keep the last fix; gps_fix says whether the latest report had one.
CREATE TABLE device_latest (
    device_id      text PRIMARY KEY REFERENCES devices (device_id),
    ts             timestamptz,
    seq            bigint,
    received_at    timestamptz,
    battery_pct    real,
    charging       boolean,
    battery_temp_c real,
    gps_fix        boolean,
    lat            double precision,
    lon            double precision,
    accuracy_m     real,
    speed_mps      real,
    heading_deg    real,
    last_fix_at    timestamptz,
    recording      text,
    storage_pct    real,
    docked         boolean,
    firmware       text,
    live           boolean,
    viewers        smallint,
    online         boolean,
    status_at      timestamptz
);

CREATE TABLE rejected_messages (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at   timestamptz NOT NULL,
    topic         text NOT NULL,
    device_id     text,
    reason        text NOT NULL,
    detail        text NOT NULL,
    payload_bytes integer NOT NULL,
    payload       bytea NOT NULL  -- the first bytes only (rejected_payload_keep_bytes)
);
CREATE INDEX rejected_messages_received ON rejected_messages (received_at);
CREATE INDEX rejected_messages_reason ON rejected_messages (reason, received_at);
"""

_HEALTH_COLUMNS = """
    device_id,
    min(battery_pct) AS battery_min,
    max(battery_pct) AS battery_max,
    avg(battery_pct) AS battery_avg,
    max(storage_pct) AS storage_max,
    count(*) AS samples,
    count(*) FILTER (WHERE recording = 'recording') AS recording_samples
FROM telemetry
GROUP BY bucket, device_id
"""

_PARTITION_FUNCTIONS = """
CREATE FUNCTION watchfloor_ensure_partition(parent text, day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    child text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(child) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext(child));
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            child, parent,
            day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END IF;
END $$;

-- Retention on plain PostgreSQL: drop whole days, which costs no vacuum.
CREATE FUNCTION watchfloor_drop_partitions(parent text, before date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    child record;
    dropped integer := 0;
BEGIN
    FOR child IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent::regclass
          AND c.relname ~ ('^' || parent || '_p[0-9]{8}$')
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < before
    LOOP
        EXECUTE format('DROP TABLE %I', child.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;
"""


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    timescale = "timescaledb" in feats
    partitioning = "" if timescale else "PARTITION BY RANGE (ts)"
    conn.execute(_CORE.replace("{partitioning}", partitioning))
    if not timescale:
        conn.execute(_PARTITION_FUNCTIONS)
        conn.execute(
            "CREATE VIEW device_health_hourly AS SELECT date_trunc('hour', ts) AS bucket,"
            + _HEALTH_COLUMNS
        )
        return

    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    for table in TIME_PARTITIONED:
        conn.execute(
            "SELECT create_hypertable(%s::regclass, by_range('ts', INTERVAL '1 day'))", (table,)
        )
    if "compression" in feats:
        for table in TIME_PARTITIONED:
            conn.execute(
                f"ALTER TABLE {table} SET (timescaledb.compress,"
                " timescaledb.compress_segmentby = 'device_id',"
                " timescaledb.compress_orderby = 'ts DESC, seq DESC')"
            )
            conn.execute(
                "SELECT add_compression_policy(%s::regclass, %s)",
                (table, retention.compress_after),
            )
    if "retention_policy" in feats:
        for table in TIME_PARTITIONED:
            conn.execute("SELECT add_retention_policy(%s::regclass, %s)", (table, retention.keep))
    if "continuous_aggregate" in feats:
        conn.execute(
            "CREATE MATERIALIZED VIEW device_health_hourly WITH (timescaledb.continuous) AS"
            " SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket," + _HEALTH_COLUMNS
            + " WITH NO DATA"
        )
        # Real-time aggregation (materialized_only = false) makes the last hour visible too.
        conn.execute(
            "ALTER MATERIALIZED VIEW device_health_hourly SET (timescaledb.materialized_only = false)"
        )
        conn.execute(
            "SELECT add_continuous_aggregate_policy('device_health_hourly',"
            " start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',"
            " schedule_interval => INTERVAL '15 minutes')"
        )
    else:
        conn.execute(
            "CREATE VIEW device_health_hourly AS SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket,"
            + _HEALTH_COLUMNS
        )
