"""The schema's migrations, in order: one module each, holding its SQL and how it applies
it on TimescaleDB or plain PostgreSQL. :mod:`telemetry.schema` runs them.

A migration, once released, never changes: a new change is a new module and a new entry
at the end of :data:`MIGRATIONS`.
"""

from __future__ import annotations

from collections.abc import Sequence

from telemetry.migrations import (
    v1_initial,
    v2_users_and_alerts,
    v3_incidents,
    v4_audit_and_credentials,
    v5_live_view,
    v6_oidc_sign_ins,
    v7_runtime_role,
    v8_token_versions,
    v9_accountable_consent,
    v10_viewing_officer,
    v11_alert_policy,
    v12_alert_escalation,
    v13_offline_profile,
    v14_device_assignments,
    v15_incident_command,
    v16_request_incident,
    v17_storage_job_runs,
    v18_system_alerts,
)
from telemetry.migrations.base import TIME_PARTITIONED, Migration, Retention

__all__ = ["MIGRATIONS", "TIME_PARTITIONED", "Migration", "Retention"]

MIGRATIONS: Sequence[Migration] = (
    Migration(1, "initial schema", v1_initial.apply),
    Migration(2, "users and alerts", v2_users_and_alerts.apply),
    Migration(3, "incidents", v3_incidents.apply),
    Migration(4, "audit log and device credentials", v4_audit_and_credentials.apply),
    Migration(5, "live view", v5_live_view.apply),
    Migration(6, "oidc sign-ins", v6_oidc_sign_ins.apply),
    Migration(7, "keyed audit chain, checkpoints, partitions for a runtime role", v7_runtime_role.apply),
    Migration(8, "token versions", v8_token_versions.apply),
    Migration(9, "accountable consent", v9_accountable_consent.apply),
    Migration(10, "the officer who carried the camera, with each viewing", v10_viewing_officer.apply),
    Migration(11, "alert policy", v11_alert_policy.apply),
    Migration(12, "alert escalation and history", v12_alert_escalation.apply),
    Migration(13, "offline per profile, on duty, a second escalation level", v13_offline_profile.apply),
    Migration(14, "who carried which camera: custody windows", v14_device_assignments.apply),
    Migration(15, "incident command: grade, reference, commander, polygon, outcome", v15_incident_command.apply),
    Migration(16, "the incident a live-view request names", v16_request_incident.apply),
    Migration(17, "watchfloor's own runs of the storage jobs", v17_storage_job_runs.apply),
    Migration(18, "system alerts: an alert with no device, about a subject", v18_system_alerts.apply),
)
