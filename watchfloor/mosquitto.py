"""A Mosquitto started from the shipped configuration on a spare port.

Tests and benchmarks use this instead of the machine's broker: the machine's stock
configuration drops QoS 1 messages under load, and "nothing lost" must be shown against
the configuration the product ships (deploy/mosquitto/mosquitto.conf). Only the listener,
the file locations and authentication are replaced: anonymous access by default, or the
shipped ACL with a password file (``password_file=``, the services' accounts) to test
authentication itself. The shipped configuration sets ``per_listener_settings true``, so
these options apply to the one listener written here (the services' listener). The
cameras' TLS listener (deploy/mosquitto/conf.d, included by ``include_dir``) is left out;
pass its lines in ``extra``, with throwaway certificates, the machine's dynamic-security
plugin and a file of cameras' logins, to test it (tests/test_security_broker.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from telemetry.embedded import free_port

__all__ = ["SHIPPED_ACL", "SHIPPED_CONF", "MosquittoProcess", "cameras_listener", "dynsec_plugin", "throwaway_ca"]

SHIPPED_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = SHIPPED_CONF.with_name("acl")
SHIPPED_TLS = SHIPPED_CONF.with_name("conf.d") / "tls.conf"
# Where Debian (and Ubuntu) put the plugin; the eclipse-mosquitto image's path is the shipped one.
_DYNSEC_PLUGINS = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                   "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so")
_REPLACED = ("listener", "persistence_location", "password_file", "acl_file", "allow_anonymous", "log_dest",
             "include_dir")


class MosquittoProcess:
    """Owns one mosquitto process (by PID); ``stop()`` and ``kill()`` are idempotent."""

    def __init__(self, workdir: Path, *, port: int | None = None, extra: list[str] | None = None,
                 password_file: Path | None = None, acl_file: Path = SHIPPED_ACL) -> None:
        if shutil.which("mosquitto") is None:
            raise FileNotFoundError("mosquitto is not installed")
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        kept = [line for line in SHIPPED_CONF.read_text().splitlines()
                if not line.strip().startswith(_REPLACED)]
        auth = ["allow_anonymous true"] if password_file is None else [
            "allow_anonymous false", f"password_file {password_file}", f"acl_file {acl_file}"]
        kept += [f"listener {self.port} 127.0.0.1", f"persistence_location {data}/",
                 *auth, f"log_dest file {workdir}/mosquitto.log", *(extra or [])]
        if os.geteuid() == 0:  # private temporary folders: do not drop to the mosquitto user
            kept.append("user root")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(kept) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 10.0) -> "MosquittoProcess":
        log = (self.workdir / "stderr.log").open("ab")
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.workdir / 'stderr.log').read_text()}")
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def dynsec_plugin() -> str | None:
    """This machine's dynamic-security plugin, or None where it is not installed."""
    return next((p for p in _DYNSEC_PLUGINS if Path(p).exists()), None)


def throwaway_ca(where: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) for 127.0.0.1, made now with openssl in ``where``
    (never kept: tests and benchmarks only)."""
    ca_key, ca, key, csr, cert = (where / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = where / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test CA"],
           ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
           ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "1", "-extfile", ext]]
    for command in run:
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def cameras_listener(port: int, *, ca: Path, cert: Path, key: Path, plugin: str, accounts: Path) -> list[str]:
    """The shipped cameras' listener (conf.d/tls.conf) on 127.0.0.1:``port``, with these files in
    place of /mosquitto/certs, this machine's plugin and ``accounts`` in place of the image's:
    lines for :class:`MosquittoProcess`'s ``extra``."""
    return [line.replace("8883 0.0.0.0", f"{port} 127.0.0.1").replace("/mosquitto/certs/ca.crt", str(ca))
            .replace("/mosquitto/certs/server.crt", str(cert)).replace("/mosquitto/certs/server.key", str(key))
            .replace("/usr/lib/mosquitto_dynamic_security.so", plugin)
            .replace("/mosquitto/data/device-accounts.json", str(accounts))
            for line in SHIPPED_TLS.read_text().splitlines() if line.strip() and not line.startswith("#")]
