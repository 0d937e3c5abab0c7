"""An incident's disclosure archive, built from rows already read (pure: no database).

One zip: ``incident.json``; ``units.csv`` (each unit with the officers who carried it, by
custody window); ``tracks.geojson`` (one LineString per unit and officer, every fix as
stored, with its times); ``events.csv``; ``alerts.csv`` and ``alert_handling.csv`` (each
alert's timeline: raised, escalated, acknowledged, resolved); ``viewings.csv`` (the columns
of the viewing-record export); and ``manifest.json``: every file's SHA-256 and the audit
chain's head at export time (the export's own audit entry). Every CSV cell goes through
:func:`api.spreadsheet.csv_cell`, like every other CSV the API produces."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from api.spreadsheet import csv_cell
from telemetry.alert_timeline import timeline

__all__ = ["MANIFEST", "VIEWING_COLUMNS", "Export", "build_archive"]

Row = dict[str, Any]
MANIFEST = "manifest.json"
#: The same columns as GET /live-view/sessions.csv.
VIEWING_COLUMNS = ("started_at", "ended_at", "duration_s", "device_id", "callsign", "borough", "officer", "viewer",
                   "role", "reason", "basis", "consent_id", "end_reason", "refused", "session_id")


def _csv(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    return out.getvalue().encode()


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Export:
    """What an incident's archive holds, as read in one transaction."""

    incident: Row
    start: datetime
    end: datetime
    assigned: set[str]
    units: list[Row]
    windows: list[Row]
    fixes: list[Row]
    events: list[Row]
    alerts: list[Row]
    viewings: list[Row]
    exported_by: str
    exported_at: datetime

    def files(self) -> dict[str, bytes]:
        return {
            "incident.json": orjson.dumps(self.incident, option=orjson.OPT_INDENT_2),
            "units.csv": self._units(),
            "tracks.geojson": self._tracks(),
            "events.csv": _csv(("ts", "device_id", "type", "officer", "callsign", "details"),
                               ([e["at"], e["device_id"], e["what"], e["officer"], e["callsign"], e["detail"]]
                                for e in self.events)),
            "alerts.csv": _csv(("alert_id", "raised_at", "device_id", "officer", "callsign", "kind", "severity",
                                "status", "detail"),
                               ([a["id"], a["raised_at"], a["device_id"], a["officer"], a["callsign"], a["kind"],
                                 a["severity"], a["status"], a["detail"]] for a in self.alerts)),
            "alert_handling.csv": _csv(("alert_id", "at", "action", "actor", "detail"), self._handling()),
            "viewings.csv": _csv(VIEWING_COLUMNS, (self._viewing(v) for v in self.viewings)),
        }

    def _units(self) -> bytes:
        by_unit: dict[str, list[Row]] = {}
        for window in self.windows:
            by_unit.setdefault(window["device_id"], []).append(window)
        rows: list[list[object]] = []
        for unit in self.units:
            base = [unit["device_id"], unit["borough"], unit["role"], unit["device_id"] in self.assigned]
            carried = by_unit.get(unit["device_id"], [])
            rows += [base + [w["officer"], w["callsign"], w["valid_from"], w["valid_to"]] for w in carried]
            if not carried:  # nobody on record carried it in the window: the unit still counts
                rows.append(base + [None] * 4)
        return _csv(("device_id", "borough", "role", "assigned_to_incident", "officer", "callsign", "carried_from",
                     "carried_to"), rows)

    def _tracks(self) -> bytes:
        """One feature per run of fixes of one unit under one officer: a swap at the dock
        splits a unit's line in two, each named for who carried it."""
        features: list[dict[str, Any]] = []
        run: list[Row] = []

        def flush() -> None:
            if run:
                first = run[0]
                features.append({"type": "Feature",
                                 "geometry": {"type": "LineString" if len(run) > 1 else "Point",
                                              "coordinates": [[f["lon"], f["lat"]] for f in run] if len(run) > 1
                                              else [first["lon"], first["lat"]]},
                                 "properties": {"device_id": first["device_id"], "officer": first["officer"],
                                                "callsign": first["callsign"],
                                                "times": [_iso(f["ts"]) for f in run],
                                                "recording": [f["recording"] for f in run]}})
                run.clear()

        for fix in self.fixes:
            if run and (run[-1]["device_id"], run[-1]["officer"]) != (fix["device_id"], fix["officer"]):
                flush()
            run.append(fix)
        flush()
        return orjson.dumps({"type": "FeatureCollection", "features": features})

    def _handling(self) -> Iterable[list[object]]:
        for alert in self.alerts:
            history = [{**h, "at": datetime.fromisoformat(h["at"])} for h in alert["history"]]
            for entry in timeline(alert, history):
                yield [alert["id"], entry.at, entry.action, entry.actor, entry.detail]

    @staticmethod
    def _viewing(row: Row) -> list[object]:
        ended = row["ended_at"]
        duration = round((ended - row["started_at"]).total_seconds(), 1) if ended is not None else None
        return [duration if c == "duration_s" else row.get(c) for c in VIEWING_COLUMNS]

    @staticmethod
    def digests(files: dict[str, bytes]) -> dict[str, str]:
        return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def build_archive(export: Export, files: dict[str, bytes], *, head_seq: int, head_hash: str | None) -> bytes:
    """The zip: the files and the manifest, each stamped with the export's time."""
    manifest = {
        "incident_id": export.incident["id"],
        "reference": export.incident.get("reference"),
        "window": {"start": _iso(export.start), "end": _iso(export.end)},
        "exported_at": _iso(export.exported_at),
        "exported_by": export.exported_by,
        "files": {name: {"sha256": digest, "bytes": len(files[name])}
                  for name, digest in Export.digests(files).items()},
        "audit_head": {"seq": head_seq, "hash": head_hash},
    }
    stamp = export.exported_at.astimezone(timezone.utc).timetuple()[:6]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in [*sorted(files.items()), (MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))]:
            archive.writestr(zipfile.ZipInfo(name, date_time=stamp), data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()
