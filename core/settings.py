"""The one settings object, read from the environment (prefix ``WATCHFLOOR_``) at start-up.

Nothing reads the environment at import time: the command line builds a ``Settings`` and
passes it down, so tests build their own.
"""

from __future__ import annotations

import ipaddress
import zoneinfo
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.areas import load_areas
from core.contract import SERVICE_PREFIX

__all__ = ["MIN_SECRET_BYTES", "Settings"]

# The shortest token-signing or audit key accepted: 256 bits, SHA-256's output size
# (HS256 tokens, the HMAC-SHA256 audit chain).
MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    """Configuration of every Watchfloor process. Each field is documented in the README."""

    model_config = SettingsConfigDict(env_prefix="WATCHFLOOR_", extra="ignore")

    # Where to find the broker and the database. Unset means: start the embedded ones.
    mqtt_url: str | None = None
    database_url: str | None = None
    # Two database roles (docs/operations.md "Database roles"): `watchfloor db migrate` connects
    # as the owner of the tables (this URL; unset: database_url) and grants the runtime role
    # (named here) what the API and ingest need; they connect with database_url as that role,
    # which owns nothing and may only append to the audit log. The demo keeps one role.
    migrate_database_url: str | None = None
    database_runtime_role: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    data_dir: Path = Path(".watchfloor")
    # The cameras' broker logins (Mosquitto's dynamic-security plugin on the cameras' listener):
    # `mqtts://watchfloor-device-admin:PASSWORD@HOST:8883`, and the CA its certificate is
    # checked against (unset: the system's). Provisioning gives a camera its login there and
    # retiring (API or command line) disables it at once. Required with an authenticated
    # broker (a mqtt_url with a username); unset otherwise, no broker login is touched.
    device_accounts_url: str | None = None
    device_accounts_ca_file: Path | None = None

    # Ingest
    # Names the worker's persistent session. In the services' namespace (SERVICE_PREFIX),
    # which no device id may enter: a camera's client id is its device id, so a worker named
    # like a device could have its session taken by that camera.
    ingest_client_id: str = Field(default="watchfloor-ingest-1",
                                  pattern=f"^{SERVICE_PREFIX}[A-Za-z0-9_.-]{{1,100}}$")
    # Shared-subscription group; empty subscribes directly (one worker only). The embedded
    # broker (rumqttd) panics when a persistent session with a $share filter resumes, so the
    # demo runs one worker with a direct subscription.
    ingest_share_group: str = "watchfloor-ingest"
    mqtt_protocol: str = Field(default="auto", pattern="^(auto|5|3.1.1)$")
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=600)
    ingest_queue_max: int = Field(default=20_000, ge=100)
    ingest_batch_max: int = Field(default=5_000, ge=1)
    ingest_batch_interval_ms: int = Field(default=20, ge=1, le=10_000)
    require_registration: bool = False
    # False: this worker stores and raises nothing (no alert rules, no policy, no sweeps): for
    # replaying an archive into a fresh database, where the past's alerts would be noise, and
    # for bench/ingest.py, which measures the alert engine's cost against it in one run.
    ingest_raise_alerts: bool = True
    # Per device, per ingest worker: telemetry and events past this rate are rejected as
    # rate_limited (status messages never are). The burst lets a camera back from a tunnel
    # send its backlog; a faulty or hostile one is held to the rate.
    ingest_device_rate_per_s: float = Field(default=50.0, gt=0)
    ingest_device_burst: int = Field(default=5_000, ge=1)

    # Validation limits (see docs/mqtt-contract.md)
    max_payload_bytes: int = Field(default=4_096, ge=256, le=1_048_576)
    max_future_skew_s: int = Field(default=300, ge=0)
    rejected_payload_keep_bytes: int = Field(default=1_024, ge=0, le=65_536)
    # Rejected messages kept row by row per (device, reason) per minute; the rest of the
    # minute are counted (metrics) and written as one summary row.
    rejected_keep_per_device_per_min: int = Field(default=10, ge=1, le=100_000)

    # Alerts (raised by ingest)
    alert_battery_warn_pct: float = Field(default=20.0, ge=0, le=100)
    alert_battery_critical_pct: float = Field(default=10.0, ge=0, le=100)
    alert_storage_warn_pct: float = Field(default=90.0, ge=0, le=100)
    alert_gps_lost_after_s: int = Field(default=120, ge=1)
    # A quiet unit's offline timeout when the alert policy gives its role none (the policy's
    # ``after_s`` for offline, per role: docs/operations.md, "Offline per profile").
    alert_offline_after_s: float = Field(default=120.0, ge=5, le=86_400)
    # Ingest reads the alert policy again when the API announces a change, and at least this
    # often in case an announcement was missed.
    alert_policy_refresh_s: float = Field(default=30.0, ge=1, le=3600)
    # A high or critical alert of one of these kinds still open (not acknowledged) this many
    # seconds after it was raised escalates to the supervisors (docs/operations.md). A kind
    # not listed never escalates. JSON in the environment: {"emergency": 30, ...}.
    alert_escalate_after_s: dict[str, float] = Field(
        default_factory=lambda: {"emergency": 30.0, "assigned_not_recording": 60.0})
    # An escalated alert still open this many seconds after its first escalation escalates
    # again, to level 2: the force's duty inspectors (firearms commanders of every area). A
    # kind not listed stops at level 1. JSON in the environment.
    alert_escalate_again_after_s: dict[str, float] = Field(
        default_factory=lambda: {"emergency": 60.0, "assigned_not_recording": 120.0})
    # Geofence without flapping: a unit enters (leaves) an incident's area once its fixes have
    # put it more than the margin inside (outside) for the dwell time; a fix less accurate
    # than the margin is ignored.
    alert_geofence_margin_m: float = Field(default=25.0, ge=0, le=1000)
    alert_geofence_dwell_s: float = Field(default=15.0, ge=0, le=3600)

    # API and live feed
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    # Signs the API's bearer tokens. Required outside the demo: from the environment, or
    # a file (a container secret); never from the repository.
    auth_secret: SecretStr | None = None
    auth_secret_file: Path | None = None
    token_ttl_s: int = Field(default=12 * 3600, ge=60)
    # Keys the audit chain (HMAC): the database never holds it, so its owner cannot forge a
    # chain that verifies. Required by the API outside the demo (which makes one per data dir).
    audit_key: SecretStr | None = None
    audit_key_file: Path | None = None
    live_rate_hz: float = Field(default=4.0, gt=0, le=50)  # deltas per second per client, at most
    live_alert_backlog: int = Field(default=500, ge=10)  # alerts queued for a slow client
    # An incident's area is a circle of at most this radius: its geofence alerts every unit
    # inside, so a city-wide circle would page the whole force.
    incident_max_radius_m: float = Field(default=2_000.0, ge=10, le=50_000)
    # The force's areas, one name a line (core/areas.py); unset: the 32 London boroughs and the
    # City of London. Every borough or area written (registry, users, incidents) must be one.
    areas_file: Path | None = None

    # External identity provider (OIDC): its RS256/ES256 JWTs are accepted beside local
    # tokens when issuer, audience and a JWKS (URL or file) are set. Role and areas come from
    # claims (dotted paths reach nested claims, e.g. realm_access.roles).
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_jwks_file: Path | None = None
    oidc_algorithms: str = "RS256,ES256"
    oidc_username_claim: str = "preferred_username"
    oidc_roles_claim: str = "roles"
    oidc_role_prefix: str = ""  # e.g. "watchfloor-" when the provider's roles are "watchfloor-operator"
    oidc_areas_claim: str = "areas"

    # Limits (docs/api.md "Limits"): request bodies, requests per user, failed sign-ins per
    # (client address, username), WHIP publishes per device. Per API process.
    max_request_bytes: int = Field(default=262_144, ge=1_024, le=16 * 1_048_576)
    rate_limit_user_per_s: float = Field(default=20.0, gt=0)
    rate_limit_user_burst: int = Field(default=100, ge=1)
    rate_limit_sign_in_failures_per_min: float = Field(default=5.0, gt=0)
    rate_limit_sign_in_failures_burst: int = Field(default=5, ge=1)
    rate_limit_device_per_min: float = Field(default=12.0, gt=0)
    rate_limit_device_burst: int = Field(default=5, ge=1)
    # Failed attempts at one account (a username, a device) from every address it has not
    # succeeded from lately, together: bounds a guess spread over many addresses, and cannot
    # refuse the account's own known addresses (docs/api.md "Limits").
    rate_limit_sign_in_user_failures_per_min: float = Field(default=30.0, gt=0)
    rate_limit_sign_in_user_failures_burst: int = Field(default=30, ge=1)
    rate_limit_device_all_clients_per_min: float = Field(default=30.0, gt=0)
    rate_limit_device_all_clients_burst: int = Field(default=30, ge=1)
    # Password verifications (argon2: a core and 64 MiB each) running at once per process;
    # sign-ins past it are refused with 503 at once instead of queueing behind a flood.
    sign_in_max_concurrent: int = Field(default=2, ge=1, le=64)
    # Proxies whose X-Forwarded-For / Forwarded header names the client (addresses or CIDRs,
    # e.g. ["10.0.0.0/8"]); empty: the peer's address is the client, whatever it says.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Live feeds open at once per process: per user, and sockets that have not authenticated yet.
    live_max_feeds_per_user: int = Field(default=8, ge=1, le=10_000)
    live_max_unauthenticated: int = Field(default=100, ge=1, le=100_000)

    # Dashboard map: a tile server's URL template ({z}/{x}/{y}), e.g. a force's own; unset,
    # the page draws borough outlines only (works offline). Its host must be allowed by the CSP.
    map_tiles_url: str | None = Field(default=None, pattern=r"^https?://[^\s\"'<>]+$")
    map_tiles_attribution: str = Field(default="", max_length=300)

    # Observability. Logs: "text" for people, "json" (one object per line) for collectors.
    log_format: str = Field(default="text", pattern="^(text|json)$")
    # Ingest serves Prometheus metrics on this port (0: off); loopback unless told otherwise,
    # because the listener has no authentication.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # The API serves /metrics on its own port (aggregates only: no ids, names or tokens).
    # Keep it off the public route at the proxy, or turn it off here.
    api_metrics: bool = True

    # Live view (docs/api.md "Live view"). ICE servers for the relay's peer connections, as
    # RTCIceServer JSON objects ({"urls": [...], "username": ..., "credential": ...}); empty:
    # host candidates only (no public STUN server is ever added behind the operator's back).
    relay_ice_servers: list[dict[str, Any]] = Field(default_factory=list)
    # Candidates in offers that name private addresses (RFC 1918, RFC 4193, carrier-grade
    # NAT): allowed, because control rooms and cameras reach the relay over private
    # networks; false for a relay that serves only the internet. Loopback, link-local,
    # metadata and the like are refused whatever this says (streaming/offer.py).
    relay_allow_private_candidates: bool = True
    # WHEP sessions an API process holds at most: per user, per camera, in all.
    live_view_max_sessions_per_user: int = Field(default=4, ge=1, le=1000)
    live_view_max_viewers_per_camera: int = Field(default=16, ge=1, le=10_000)
    live_view_max_viewers: int = Field(default=200, ge=1, le=100_000)
    # A firearms unit that is already recording may be viewed without asking its officer.
    live_view_policy_firearms_recording: bool = True
    live_view_request_timeout_s: int = Field(default=60, ge=5, le=3600)  # the camera must answer in this
    live_view_idle_stop_s: int = Field(default=60, ge=1, le=3600)  # stream stops with no viewer this long
    # ... and only on current state: the unit is online and its latest reading is at most this old.
    live_view_policy_max_reading_age_s: int = Field(default=60, ge=1, le=3600)
    # What the wearer's camera shows of each viewer: "name" (display name, else username),
    # "callsign" (the account's username: forces use the collar number or call sign), "role".
    live_view_wearer_sees: str = Field(default="name", pattern="^(name|callsign|role)$")
    # A later request under an accepted request's consent, by the person who made that
    # request, is covered by it (the camera is not asked again); false: every request is put
    # to the camera. Anyone else's request always is (docs/live-view.md "Who a consent covers").
    live_view_consent_covers_same_requester: bool = True
    # A later request naming the incident that the accepted request named is covered by its
    # consent too (rule same_incident); false: such requests are put to the camera.
    live_view_consent_covers_same_incident: bool = True
    # Live view's broker intake (one inbox per API process, shared by every camera): its size,
    # and each camera's own rate before it (replies and consent events; the excess is dropped
    # and counted, so one camera flooding cannot crowd out the others' answers).
    live_view_inbox_max: int = Field(default=10_000, ge=10, le=1_000_000)
    live_view_intake_per_device_per_s: float = Field(default=2.0, gt=0, le=10_000)
    live_view_intake_per_device_burst: int = Field(default=20, ge=1, le=100_000)
    # A watch_me event older than this (its ts: a camera's buffer sent late) grants no consent.
    live_view_event_max_age_s: int = Field(default=30, ge=1, le=3600)
    # A viewing ends after this long (max_length): the viewer asks again, with a reason.
    live_view_max_viewing_s: int = Field(default=3600, ge=1, le=86_400)
    # The force's time zone (IANA): the auditor's screens show times, and read the times typed
    # into their filters, in it, whatever the browser's locale and zone.
    force_time_zone: str = "Europe/London"
    # The simulated cameras' WHIP endpoint (the API's base URL) and their secrets (a JSON
    # file {device_id: secret}); unset, simulated cameras decline live-view requests.
    simulator_api_url: str | None = None
    simulator_secrets_file: Path | None = None

    # Storage. timescaledb: "auto" uses it when the server has it (preloaded), "off" never,
    # "require" refuses to migrate without it.
    timescaledb: str = Field(default="auto", pattern="^(auto|off|require)$")
    retention_days: int = Field(default=30, ge=1)
    # Retention of the tables that are not partitioned by day (`watchfloor db maintain`,
    # ingest hourly): rejected messages, resolved alerts, ended viewings and their requests.
    rejected_retention_days: int = Field(default=7, ge=1)
    alerts_retention_days: int = Field(default=90, ge=1)
    viewings_retention_days: int = Field(default=365, ge=1)
    # Where ended viewing records (and the consents and requests they leave) are exported
    # before retention drops them; unset, they are kept (never dropped unexported).
    viewings_archive_dir: Path | None = None
    compress_after_days: int = Field(default=2, ge=1)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("force_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/London)") from None
        return value

    def force_areas(self) -> frozenset[str]:
        """The areas a borough may name (``areas_file``, or London's); read once at start-up."""
        return load_areas(self.areas_file)

    def audit_secret(self, *, required: bool) -> bytes | None:
        """The audit chain's key (``audit_key`` or ``audit_key_file``); ``required`` refuses to
        run without a strong one."""
        key = self.audit_key.get_secret_value() if self.audit_key else None
        if key is None and self.audit_key_file is not None:
            key = self.audit_key_file.read_text().strip()
        if key is None and not required:
            return None
        if not key or len(key.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"set WATCHFLOOR_AUDIT_KEY (or WATCHFLOOR_AUDIT_KEY_FILE) to at least {MIN_SECRET_BYTES} random"
                " bytes, kept away from the database and its backups (docs/operations.md \"The audit log\")"
            )
        return key.encode()

    def signing_secret(self) -> str:
        """The token-signing secret; refuses to run without a strong one."""
        secret = self.auth_secret.get_secret_value() if self.auth_secret else None
        if secret is None and self.auth_secret_file is not None:
            secret = self.auth_secret_file.read_text().strip()
        if not secret or len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"set WATCHFLOOR_AUTH_SECRET (or WATCHFLOOR_AUTH_SECRET_FILE) to at least {MIN_SECRET_BYTES}"
                " random bytes, e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return secret
