"""Versioned schema migrations, for TimescaleDB or plain PostgreSQL (>= 14).

The same tables and columns exist on both; only the storage mechanics differ:

============================  ===============================  ================================
feature                       TimescaleDB (timescale license)  plain PostgreSQL
============================  ===============================  ================================
time partitioning             hypertables, 1-day chunks        ``PARTITION BY RANGE (ts)``, daily
retention                     ``add_retention_policy``         :func:`run_maintenance` drops days
compression                   segmented by ``device_id``       none
``device_health_hourly``      continuous aggregate             a plain view over ``telemetry``
============================  ===============================  ================================

Migration 1 decides which path to take and records it; :func:`features` reads it back so
the rest of the code never guesses. Migrations take an advisory lock, so several processes
may run ``watchfloor db migrate`` at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import psycopg

__all__ = [
    "MIGRATIONS",
    "ensure_partitions",
    "features",
    "migrate",
    "pending",
    "run_maintenance",
]

_LOCK_KEY = 0x57415443  # "WATC": serialises migrations and maintenance across processes
TIME_PARTITIONED = ("telemetry", "device_events")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[psycopg.Connection, frozenset[str], "Retention"], None]


@dataclass(frozen=True)
class Retention:
    keep: timedelta
    compress_after: timedelta


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


def _initial(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
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


_USERS_AND_ALERTS = """
CREATE TABLE users (
    username      text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    password_hash text NOT NULL,
    role          text NOT NULL
                  CHECK (role IN ('operator', 'firearms_commander', 'fleet_manager', 'auditor', 'admin')),
    areas         text[] NOT NULL DEFAULT '{}',  -- borough names; '{*}' means every borough
    display_name  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

CREATE TABLE alerts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       text NOT NULL REFERENCES devices (device_id),
    kind            text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'high', 'critical')),
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'resolved')),
    detail          text NOT NULL,
    raised_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    resolved_by     text,
    outcome         text CHECK (outcome IN ('resolved', 'false_alarm', 'cleared')),
    note            text
);
-- One open alert per device and kind, whichever ingest worker raises it.
CREATE UNIQUE INDEX alerts_one_open ON alerts (device_id, kind) WHERE status <> 'resolved';
CREATE INDEX alerts_status_raised ON alerts (status, raised_at DESC);
"""


def _users_and_alerts(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_USERS_AND_ALERTS)


_INCIDENTS = """
-- An incident: a place, an area around it (a circle: a cordon radius), and assigned units.
CREATE TABLE incidents (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    lat        double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon        double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    radius_m   real NOT NULL CHECK (radius_m > 0 AND radius_m <= 50000),
    borough    text,
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    closed_at  timestamptz
);
CREATE TABLE incident_units (
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    device_id   text NOT NULL REFERENCES devices (device_id),
    assigned_by text NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, device_id)
);
CREATE INDEX incident_units_device ON incident_units (device_id);
-- Which units are inside which open incident's area now: entering and leaving are alerts.
CREATE TABLE incident_presence (
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    device_id   text NOT NULL REFERENCES devices (device_id),
    entered_at  timestamptz NOT NULL,
    PRIMARY KEY (incident_id, device_id)
);
"""


def _incidents(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_INCIDENTS)


_AUDIT_AND_CREDENTIALS = """
-- The audit log: append-only and hash-chained (services/audit.py writes and verifies it).
-- seq numbers the chain without gaps (the identity may skip a value when a transaction
-- rolls back), so a removed entry shows as a missing number.
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq       bigint NOT NULL UNIQUE,
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    device_id text,
    details   jsonb,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor_at ON audit_log (actor, at);
CREATE INDEX audit_log_device_at ON audit_log (device_id, at) WHERE device_id IS NOT NULL;

-- Revoking privileges does not bind the owner or a superuser; the trigger does, until a
-- superuser disables it on purpose, and then the hash chain shows what was changed.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
CREATE FUNCTION watchfloor_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION watchfloor_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION watchfloor_audit_append_only();

-- One secret per device (MQTT password and WHIP token); only its argon2 hash is kept.
CREATE TABLE device_credentials (
    device_id   text PRIMARY KEY REFERENCES devices (device_id),
    secret_hash text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
"""


def _audit_and_credentials(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_AUDIT_AND_CREDENTIALS)


_LIVE_VIEW = """
-- A control-room request to watch a unit live; its id is also the command's id, so the
-- camera's reply finds it. pending -> accepted | declined | expired.
CREATE TABLE live_view_requests (
    id           text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    device_id    text NOT NULL REFERENCES devices (device_id),
    requested_by text NOT NULL,
    reason       text NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'declined', 'expired')),
    detail       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    answered_at  timestamptz
);
CREATE INDEX live_view_requests_device ON live_view_requests (device_id, created_at DESC);
CREATE INDEX live_view_requests_pending ON live_view_requests (expires_at) WHERE status = 'pending';

-- Consent in force: why a camera may stream, from when, until when and why it ended.
-- At most one at a time per device, whichever API process grants it.
CREATE TABLE live_view_consents (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id         text NOT NULL REFERENCES devices (device_id),
    basis             text NOT NULL CHECK (basis IN ('officer_request', 'accepted_request', 'policy_recording')),
    request_id        text REFERENCES live_view_requests (id),
    granted_at        timestamptz NOT NULL DEFAULT now(),
    publisher_session text,
    publishing_since  timestamptz,
    ended_at          timestamptz,
    end_reason        text
);
CREATE UNIQUE INDEX live_view_consents_one_active ON live_view_consents (device_id) WHERE ended_at IS NULL;

-- Every viewing session (and every refused attempt): who, which unit, why, when, how it ended.
-- No foreign key on device_id: a refused attempt may name a device that does not exist.
CREATE TABLE viewing_sessions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text UNIQUE,  -- the relay's; NULL for a refused attempt
    device_id  text NOT NULL,
    viewer     text NOT NULL,
    role       text NOT NULL,
    reason     text,
    consent_id bigint REFERENCES live_view_consents (id),
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz,
    end_reason text,
    refused    text  -- why the attempt was refused (then ended_at = started_at)
);
CREATE INDEX viewing_sessions_device ON viewing_sessions (device_id, started_at DESC);
CREATE INDEX viewing_sessions_viewer ON viewing_sessions (viewer, started_at DESC);
CREATE INDEX viewing_sessions_open ON viewing_sessions (device_id) WHERE ended_at IS NULL;
"""


def _live_view(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_LIVE_VIEW)


_OIDC_SIGN_INS = """
-- One row per OIDC token Watchfloor has accepted, until it expires: its first use is the
-- sign-in, recorded once in the audit log whichever API process sees it first.
CREATE TABLE oidc_sign_ins (
    token_sha256 bytea PRIMARY KEY,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX oidc_sign_ins_expires ON oidc_sign_ins (expires_at);
"""


def _oidc_sign_ins(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_OIDC_SIGN_INS)


_KEYED_AUDIT = """
-- Entries chained with the audit key (HMAC) say so; those written before stay sha256 and
-- verify as before (services/audit.py). Adding a column fires no UPDATE trigger.
ALTER TABLE audit_log ADD COLUMN keyed boolean NOT NULL DEFAULT false;

-- Checkpoints exported by `watchfloor audit checkpoint`, MACed with the audit key: the API's
-- verify reports against the latest valid one. Append-only like the log; the copy kept
-- outside the database is the one that counts (the owner could delete rows here).
CREATE TABLE audit_checkpoints (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq      bigint NOT NULL,
    hash     bytea NOT NULL,
    at       timestamptz NOT NULL,
    mac      bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
REVOKE UPDATE, DELETE, TRUNCATE ON audit_checkpoints FROM PUBLIC;
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION watchfloor_audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION watchfloor_audit_append_only();
"""

# Ingest keeps daily partitions ahead and drops old ones; it runs as the runtime role, which
# owns no table, so these two run with their owner's rights (and a fixed search_path, as a
# SECURITY DEFINER function must), callable only by roles granted EXECUTE (telemetry/roles.py).
_DEFINER_PARTITIONS = """
ALTER FUNCTION watchfloor_ensure_partition(text, date) SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION watchfloor_drop_partitions(text, date) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION watchfloor_ensure_partition(text, date), watchfloor_drop_partitions(text, date)
    FROM PUBLIC;
"""


def _runtime_role(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_KEYED_AUDIT)
    if "timescaledb" not in feats:
        conn.execute(_DEFINER_PARTITIONS)


_TOKEN_VERSIONS = """
-- A user's tokens carry the version they were issued at; bumping it (sign-out, a change of
-- role or areas, disabling) ends every token issued before.
ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0;
"""


def _token_versions(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_TOKEN_VERSIONS)


MIGRATIONS: Sequence[Migration] = (
    Migration(1, "initial schema", _initial),
    Migration(2, "users and alerts", _users_and_alerts),
    Migration(3, "incidents", _incidents),
    Migration(4, "audit log and device credentials", _audit_and_credentials),
    Migration(5, "live view", _live_view),
    Migration(6, "oidc sign-ins", _oidc_sign_ins),
    Migration(7, "keyed audit chain, checkpoints, partitions for a runtime role", _runtime_role),
    Migration(8, "token versions", _token_versions),
)


def _detect(conn: psycopg.Connection, timescaledb: str) -> frozenset[str]:
    """Which storage features this server offers, as migration 1 will use them."""
    if timescaledb == "off":
        return frozenset({"native_partitioning"})
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    preloaded = "timescaledb" in str(
        conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]  # type: ignore[index]
    )
    if row is None or not preloaded:
        if timescaledb == "require":
            raise RuntimeError("TimescaleDB is required but not available (or not preloaded)")
        return frozenset({"native_partitioning"})
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    license_ = conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0]  # type: ignore[index]
    feats = {"timescaledb"}
    if license_ == "timescale":
        feats |= {"compression", "retention_policy", "continuous_aggregate"}
    return frozenset(feats)


def migrate(
    conn: psycopg.Connection,
    *,
    retention: timedelta,
    compress_after: timedelta,
    timescaledb: str = "auto",
) -> list[str]:
    """Apply every pending migration, each in its own transaction. Returns what was applied."""
    conn.commit()
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " features text[] NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        recorded = features(conn) if done else None
        feats = recorded if recorded is not None else _detect(conn, timescaledb)
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            migration.apply(conn, feats, Retention(retention, compress_after))
            conn.execute(
                "INSERT INTO schema_migrations (version, name, features) VALUES (%s, %s, %s)",
                (migration.version, migration.name, sorted(feats)),
            )
            applied.append(f"{migration.version:04d} {migration.name}")
    return applied


def pending(conn: psycopg.Connection) -> list[int]:
    """The versions not yet applied, read without any privilege beyond SELECT (a runtime role
    checks this at start instead of migrating)."""
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
        return [m.version for m in MIGRATIONS]
    done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    return [m.version for m in MIGRATIONS if m.version not in done]


def features(conn: psycopg.Connection) -> frozenset[str]:
    """The storage features that migration 1 chose for this database."""
    row = conn.execute(
        "SELECT features FROM schema_migrations WHERE version = 1"
    ).fetchone()
    if row is None:
        raise RuntimeError("database not migrated: run `watchfloor db migrate`")
    return frozenset(row[0])


def _day(ts: datetime) -> date:
    return ts.astimezone(timezone.utc).date()


def ensure_partitions(conn: psycopg.Connection, days: Iterable[date]) -> None:
    """Create the daily partitions (plain PostgreSQL only) for ``days``, committed at once."""
    with conn.transaction():
        for day in sorted(set(days)):
            for table in TIME_PARTITIONED:
                conn.execute("SELECT watchfloor_ensure_partition(%s, %s)", (table, day))


def run_maintenance(
    conn: psycopg.Connection, *, feats: frozenset[str], keep: timedelta, now: datetime
) -> int:
    """Keep partitions ahead of time and apply retention. Returns partitions dropped.

    With TimescaleDB's policies the server does this itself; on plain PostgreSQL (or an
    Apache-only TimescaleDB) it is our job, and ingest calls this hourly.
    """
    today = _day(now)
    dropped = 0
    with conn.transaction():
        got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK_KEY + 1,)).fetchone()
        if not got or not got[0]:
            return 0  # another process is doing it
        for table in TIME_PARTITIONED:
            if "native_partitioning" in feats:
                for ahead in range(3):
                    conn.execute(
                        "SELECT watchfloor_ensure_partition(%s, %s)",
                        (table, today + timedelta(days=ahead)),
                    )
                row = conn.execute(
                    "SELECT watchfloor_drop_partitions(%s, %s)", (table, today - keep)
                ).fetchone()
                dropped += int(row[0]) if row else 0
            elif "retention_policy" not in feats:
                rows = conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => %s)", (table, now - keep)
                ).fetchall()
                dropped += len(rows)
    return dropped
