// Times on the auditor's screens in the force's time zone (config.json's time_zone, the
// setting WATCHFLOOR_FORCE_TIME_ZONE), whatever the browser's locale and zone: shown with
// seconds and an unambiguous date (YYYY-MM-DD hh:mm:ss and the zone), and the wall times typed
// into a filter's datetime-local inputs read in that zone too.

export class ForceTime {
  constructor(timeZone) {
    this.timeZone = timeZone || "UTC";
    // sv-SE writes dates as YYYY-MM-DD and a 24-hour clock.
    this.shown = new Intl.DateTimeFormat("sv-SE", { timeZone: this.timeZone, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
    this.parts = new Intl.DateTimeFormat("en-US", { timeZone: this.timeZone, hourCycle: "h23", year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  format(ts) {
    return ts ? this.shown.format(new Date(ts)) : "";
  }

  // How far the zone is ahead of UTC at the instant ms (milliseconds).
  offset(ms) {
    const p = Object.fromEntries(this.parts.formatToParts(new Date(ms)).map((x) => [x.type, Number(x.value)]));
    return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) - Math.floor(ms / 1000) * 1000;
  }

  // The instant ts as a datetime-local value in the force's zone (to fill a filter).
  toLocal(ts) {
    const p = Object.fromEntries(this.parts.formatToParts(new Date(ts)).map((x) => [x.type, x.value]));
    return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}:${p.second}`;
  }

  // A datetime-local value ("2026-12-01T14:00" or with seconds), read in the force's zone, as
  // RFC 3339 UTC; null when empty. Twice: the offset at the guess may differ from the
  // offset at the answer across a clock change.
  toUtc(local) {
    if (!local) return null;
    const wall = Date.parse(`${String(local).length === 16 ? `${local}:00` : local}Z`);
    if (Number.isNaN(wall)) return null;
    let ms = wall - this.offset(wall);
    ms = wall - this.offset(ms);
    return new Date(ms).toISOString();
  }
}
