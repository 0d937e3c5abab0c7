"""Migration 5: live-view requests, consents and viewing sessions."""

from __future__ import annotations

import psycopg

from telemetry.migrations.base import Retention

__all__ = ["apply"]

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


def apply(conn: psycopg.Connection, feats: frozenset[str], retention: Retention) -> None:
    conn.execute(_LIVE_VIEW)
