"""Video for simulated cameras, as ``watchfloor simulate`` and ``watchfloor demo`` set it up.

A simulated camera can stream only with its own device secret (the WHIP endpoint accepts
nothing else). ``watchfloor simulate`` reads the secrets from a JSON file
(``--secrets-file``), which ``--provision`` writes (keep it out of the repository). The demo provisions its
fleet itself, on a thread, because each secret costs an argon2 hash (tens of
milliseconds): cameras whose secret is not made yet decline live-view requests ("no
video uplink") for the first seconds of a run.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from services import audit
from services.registry import DeviceRecord, provision_device
from simulator.fleet import Unit
from simulator.video import VideoUplink, load_secrets

__all__ = ["provision_in_background", "provision_to_file", "uplink_from_files"]

log = logging.getLogger(__name__)


def uplink_from_files(*, api_url: str | None, secrets_file: Path | None) -> VideoUplink | None:
    """The uplink for ``watchfloor simulate``; None (cameras decline) without both settings."""
    if not api_url or secrets_file is None:
        return None
    return VideoUplink(api_url=api_url, secrets=load_secrets(secrets_file))


def provision_to_file(database_url: str, units: Sequence[Unit], path: Path, *, actor: str,
                      audit_key: bytes | None) -> int:
    """Provision every unit with a new secret and write them to ``path`` (JSON, owner-only),
    for ``watchfloor simulate --provision``. Returns how many."""
    secrets: dict[str, str] = {}
    provision_in_background(database_url, units, secrets, actor=actor, via="watchfloor simulate --provision",
                            audit_key=audit_key).join()
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(secrets, indent=0, sort_keys=True))
    return len(secrets)


def provision_in_background(database_url: str, units: Sequence[Unit], secrets: dict[str, str], *,
                            actor: str = "demo", via: str = "watchfloor demo",
                            stop: threading.Event | None = None, audit_key: bytes | None = None) -> threading.Thread:
    """Give every unit a device secret, filling ``secrets`` as it goes, which the running
    uplink reads. Each provisioning is audited. Setting ``stop`` ends it after the device in
    hand; the caller joins the thread before it stops the database."""
    def run() -> None:
        try:
            with audit.connect(database_url, key=audit_key) as conn:
                for unit in units:
                    if stop is not None and stop.is_set():
                        return
                    record = DeviceRecord(unit.device_id, unit.callsign, unit.officer, unit.borough.name, unit.role)
                    secret = provision_device(conn, record=record)  # the argon2 hash: before the audit lock
                    audit.record(conn, actor=actor, action="device_provisioned", device_id=unit.device_id,
                                 details={"via": via})
                    # One device per transaction: the audit chain's lock is held until commit.
                    conn.commit()
                    secrets[unit.device_id] = secret  # only once committed: the API must know it
        except Exception:  # the demo goes on without video for the rest
            log.exception("provisioning the demo fleet's secrets failed")

    thread = threading.Thread(target=run, name="provision-video", daemon=True)
    thread.start()
    return thread
