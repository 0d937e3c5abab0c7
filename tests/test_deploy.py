"""The deployment files agree with the code: every command they run is a real `watchfloor`
subcommand, every WATCHFLOOR_* variable a real setting, every file they mount exists (but
the operator's secrets), probes point at real routes and liveness never at the database,
each ingest worker has a stable client id of its own, and the alert rules name real
metrics. (No container runtime here: this is what can be checked without one.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings
from watchfloor.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SETTINGS = {f"WATCHFLOOR_{name.upper()}" for name in Settings.model_fields}


def _load(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose() -> dict[str, Any]:
    doc = _load(DEPLOY / "compose.yaml")[0]
    assert isinstance(doc, dict)
    return doc


def _watchfloor_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items() if "watchfloor" in str(svc.get("image", ""))}


def _k8s_workloads() -> list[dict[str, Any]]:
    docs = [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in _load(path)]
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")]


def _watchfloor_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(w["metadata"]["name"], c) for w in _k8s_workloads()
            for c in w["spec"]["template"]["spec"]["containers"] if c["image"] == "watchfloor"]


def test_every_deployment_file_parses() -> None:
    """Every YAML file under deploy/ is valid YAML."""
    files = list(DEPLOY.rglob("*.yaml")) + list(DEPLOY.rglob("*.yml"))
    assert len(files) >= 8
    for path in files:
        _load(path)


def test_compose_runs_real_commands_with_real_settings() -> None:
    """Each Watchfloor service's command parses with the CLI, and its variables are settings."""
    services = _watchfloor_services()
    assert {"ingest-1", "ingest-2", "api-1", "api-2"} <= set(services)
    for name, svc in services.items():
        _parser().parse_args(svc["command"])
        unknown = {k for k in svc["environment"] if k.startswith("WATCHFLOOR_")} - SETTINGS
        assert not unknown, f"{name}: not settings: {unknown}"


def test_compose_ingest_workers_share_one_group_with_distinct_ids() -> None:
    """Two ingest workers, one $share group, a stable client id each, metrics on a port."""
    ingest = [svc for svc in _watchfloor_services().values() if svc["command"] == ["ingest"]]
    assert len(ingest) == 2
    ids = {svc["environment"]["WATCHFLOOR_INGEST_CLIENT_ID"] for svc in ingest}
    assert len(ids) == 2
    assert {svc["environment"]["WATCHFLOOR_INGEST_SHARE_GROUP"] for svc in ingest} == {"watchfloor-ingest"}
    assert all(svc["environment"]["WATCHFLOOR_METRICS_PORT"] == "9108" for svc in ingest)


def test_compose_health_checks_and_mounts() -> None:
    """Every long-running service has a health check, no Watchfloor check asks for /readyz
    (liveness must not depend on the database), and every mounted file exists but the
    operator's secrets."""
    for name, svc in _compose()["services"].items():
        if svc.get("restart") == "no":  # a one-shot (migrate): others wait for it to complete
            continue
        assert "healthcheck" in svc, f"{name} has no health check"
        test = " ".join(svc["healthcheck"]["test"])
        assert "/readyz" not in test
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.startswith("./secrets/"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    assert (DEPLOY / ".gitignore").read_text().count("secrets/") == 1
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^persistence true$", conf, re.M), "broker sessions would not survive its restart"


def test_compose_api_and_ingest_connect_as_the_runtime_role() -> None:
    """Only the one-shot migrate service connects as the tables' owner (the image's superuser)
    and grants the runtime role; the API and ingest connect as that role, wait for migrate,
    and never see the owner's password; the audit key goes to the API only (issue #13)."""
    compose = _compose()
    services = _watchfloor_services()
    owner = compose["services"]["timescaledb"]["environment"]["POSTGRES_USER"]
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "migrate"] and migrate["restart"] == "no"
    assert f"//{owner}@" in migrate["environment"]["WATCHFLOOR_MIGRATE_DATABASE_URL"]
    runtime = migrate["environment"]["WATCHFLOOR_DATABASE_RUNTIME_ROLE"]
    assert runtime != owner
    init = (DEPLOY / "postgres" / "runtime-role.sh").read_text()
    assert f"CREATE ROLE {runtime} LOGIN" in init and "SUPERUSER" not in init
    for name, svc in services.items():
        if name == "migrate":
            continue
        env = svc["environment"]
        assert f"//{runtime}@" in env["WATCHFLOOR_DATABASE_URL"], f"{name} does not connect as the runtime role"
        assert "POSTGRES_PASSWORD" not in str(env) and "WATCHFLOOR_MIGRATE_DATABASE_URL" not in env, name
        assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        has_key = "audit_key" in svc.get("secrets", []) and "WATCHFLOOR_AUDIT_KEY_FILE" in env
        assert has_key == (svc["command"][0] == "api"), name


def test_k8s_migrations_and_maintenance_alone_get_the_owner() -> None:
    """The migrate Job and the hourly maintain CronJob (run_job needs the jobs' owner) alone
    get the owner's URL, and run `db migrate` and `db maintain`; the API and ingest get the
    runtime role's; the API mounts the audit key (issue #13)."""
    docs = [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in _load(path)]
    job = next(d for d in docs if d.get("kind") == "Job")
    cron = next(d for d in docs if d.get("kind") == "CronJob")
    (maintain,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedule"].split()[1:] == ["*"] * 4
    (container,) = job["spec"]["template"]["spec"]["containers"]
    for owner, args in ((container, ["db", "migrate"]), (maintain, ["db", "maintain"])):
        _parser().parse_args(owner["args"])
        assert owner["args"] == args
        assert {"name": "watchfloor-db-owner"} in [ref.get("secretRef") for ref in owner["envFrom"]]
    secrets = {d["metadata"]["name"]: d for d in _load(DEPLOY / "k8s" / "secrets.example.yaml")}
    assert set(secrets["watchfloor-db-owner"]["stringData"]) == {"WATCHFLOOR_MIGRATE_DATABASE_URL"}
    config = next(d for d in _load(DEPLOY / "k8s" / "configmap.yaml") if d["kind"] == "ConfigMap")["data"]
    assert f"//{config['WATCHFLOOR_DATABASE_RUNTIME_ROLE']}:" in secrets["watchfloor-db"]["stringData"][
        "WATCHFLOOR_DATABASE_URL"]
    for name, workload in _watchfloor_containers():
        assert "watchfloor-db-owner" not in str(workload["envFrom"]), name
    api = next(w for w in _k8s_workloads() if w["metadata"]["name"] == "watchfloor-api")
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    assert volumes["audit-key"]["secret"]["secretName"] == "watchfloor-audit"
    assert config["WATCHFLOOR_AUDIT_KEY_FILE"].startswith(
        next(m["mountPath"] for m in api["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
             if m["name"] == "audit-key"))


def test_broker_in_flight_window_fits_in_ingest_queue() -> None:
    """The shipped broker's in-flight window per client is bounded and fits in an ingest
    worker's queue (default and as deployed), so a worker waiting on its database never
    blocks paho's thread and keeps its connection (tests/test_faults.py)."""
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    found = re.search(r"^max_inflight_messages (\d+)$", conf, re.M)
    assert found is not None
    window = int(found.group(1))
    config = next(d for d in _load(DEPLOY / "k8s" / "configmap.yaml") if d["kind"] == "ConfigMap")
    queues = [Settings().ingest_queue_max, int(config["data"].get("WATCHFLOOR_INGEST_QUEUE_MAX", 0) or 10**9)]
    queues += [int(svc["environment"].get("WATCHFLOOR_INGEST_QUEUE_MAX", Settings().ingest_queue_max))
               for svc in _watchfloor_services().values() if svc["command"] == ["ingest"]]
    assert 0 < window <= min(queues)


def test_k8s_containers_run_real_commands_with_real_settings() -> None:
    """Each Watchfloor container's args parse with the CLI; every variable it gets (directly
    or from the ConfigMap) is a setting; secrets come from Secrets, not the ConfigMap."""
    config = next(d for d in _load(DEPLOY / "k8s" / "configmap.yaml") if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= SETTINGS, set(config["data"]) - SETTINGS
    assert not {"WATCHFLOOR_DATABASE_URL", "WATCHFLOOR_MQTT_URL", "WATCHFLOOR_AUTH_SECRET"} & set(config["data"])
    containers = _watchfloor_containers()
    assert {name for name, _ in containers} == {"watchfloor-ingest", "watchfloor-api"}
    for name, container in containers:
        _parser().parse_args(container["args"])
        names = {e["name"] for e in container.get("env", [])}
        assert names <= SETTINGS, names - SETTINGS
        refs = {ref.get("secretRef", {}).get("name") for ref in container["envFrom"]} - {None}
        assert "watchfloor-db" in refs, f"{name} gets no database URL"


def test_k8s_probes_liveness_never_on_the_database() -> None:
    """API: liveness /healthz, readiness /readyz, both real routes; ingest: liveness on its
    metrics port; no liveness probe asks for /readyz."""
    from api.app import create_app

    app = create_app(settings=Settings(), database_url="postgresql://unused", mqtt_url="mqtt://127.0.0.1:1",
                     signing_secret="x" * 40, audit_key=None)
    routes = set(app.openapi()["paths"])
    probes = {name: c for name, c in _watchfloor_containers()}
    api, ingest = probes["watchfloor-api"], probes["watchfloor-ingest"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert ingest["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    for _, container in _watchfloor_containers():
        assert container["livenessProbe"]["httpGet"]["path"] != "/readyz"


def test_k8s_ingest_is_a_statefulset_named_per_pod() -> None:
    """Ingest runs as a StatefulSet whose pod name (stable) is the MQTT client id."""
    ingest = next(w for w in _k8s_workloads() if w["metadata"]["name"] == "watchfloor-ingest")
    assert ingest["kind"] == "StatefulSet" and ingest["spec"]["replicas"] >= 2
    env = ingest["spec"]["template"]["spec"]["containers"][0]["env"]
    client_id = next(e for e in env if e["name"] == "WATCHFLOOR_INGEST_CLIENT_ID")
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    """kustomize applies every manifest, and never the placeholder secrets."""
    listed = set(_load(DEPLOY / "k8s" / "kustomization.yaml")[0]["resources"])
    present = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secrets.example.yaml"}


def test_image_is_non_root_with_the_watchfloor_entry_point_and_every_package() -> None:
    """The image runs as a non-root user, starts `watchfloor`, and copies every package."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert 'ENTRYPOINT ["watchfloor"]' in dockerfile
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    top = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for package in top:
        assert f"COPY {package} ./{package}" in dockerfile, f"the image lacks {package}"
        assert f"!{package}/" in ignore
    assert project["project"]["scripts"]["watchfloor"] == "watchfloor.cli:main"


@pytest.mark.parametrize("rules", ["alerts.yml"])
def test_alert_rules_name_real_metrics(rules: str) -> None:
    """Every watchfloor_* series in the alert rules is one the code exports."""
    source = (ROOT / "telemetry" / "metrics.py").read_text() + (ROOT / "api" / "observability.py").read_text()
    text = (DEPLOY / "prometheus" / rules).read_text()
    for name in set(re.findall(r"watchfloor_[a-z_]+", text)):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        short = base.removeprefix("watchfloor_relay_")
        assert f'"{base}"' in source or f'"{short}"' in source, f"{name} is not exported"


def test_metrics_and_probes_stay_inside() -> None:
    """Neither the Ingress nor the compose proxy routes /metrics or /readyz from outside: no
    Prefix "/" path, and nginx answers them 404 itself."""
    for ingress in _load(DEPLOY / "k8s" / "ingress.yaml"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert not (path["path"] == "/" and path["pathType"] == "Prefix")
                assert not path["path"].startswith(("/metrics", "/readyz", "/healthz"))
    nginx = (DEPLOY / "nginx" / "watchfloor.conf").read_text()
    assert "location = /metrics { return 404; }" in nginx and "location = /readyz  { return 404; }" in nginx


def test_cameras_and_services_log_in_on_separate_listeners() -> None:
    """The broker's configuration keeps the two kinds of account apart: per-listener
    authentication; the services' listener with their password file; the cameras' with the
    dynamic-security plugin (logins bound to the device id, disabled at retirement) and no
    password file, its file in the data volume that the broker writes; compose and Kubernetes
    mount the services' file and seed the plugin's into that volume; the API is given the
    device-admin URL and the CA (the attacks themselves: tests/test_security_broker.py)."""
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    tls = (DEPLOY / "mosquitto" / "conf.d" / "tls.conf").read_text()
    assert re.search(r"^per_listener_settings true$", conf, re.M)
    services = conf.split("listener 1883", 1)[1]
    assert re.search(r"^password_file /mosquitto/config/passwd-services$", services, re.M)
    assert re.search(r"^plugin /usr/lib/mosquitto_dynamic_security\.so$", tls, re.M)  # the image's path
    accounts = "/mosquitto/data/device-accounts.json"
    assert re.search(rf"^plugin_opt_config_file {accounts}$", tls, re.M)
    assert not re.search(r"^(password_file|acl_file|use_username_as_clientid)", tls, re.M)
    assert "use_username_as_clientid" not in conf  # services choose their own ids
    compose = _compose()["services"]
    mounts = {v.split(":")[1] for v in compose["mosquitto"]["volumes"]}
    assert "/mosquitto/config/passwd-services" in mounts and "/mosquitto/data" in mounts
    assert not any("passwd-devices" in v for v in compose["mosquitto"]["volumes"])
    assert compose["mosquitto"]["depends_on"]["mosquitto-init"] == {"condition": "service_completed_successfully"}
    assert accounts in " ".join(compose["mosquitto-init"]["command"])
    for api in ("api-1", "api-2"):
        env = compose[api]["environment"]
        assert env["WATCHFLOOR_DEVICE_ACCOUNTS_URL"].startswith("mqtts://watchfloor-device-admin:")
        assert env["WATCHFLOOR_DEVICE_ACCOUNTS_URL"].endswith("@mosquitto:8883")
        assert env["WATCHFLOOR_DEVICE_ACCOUNTS_CA_FILE"] == "/run/secrets/mqtt_ca"
        assert "mqtt_ca" in compose[api]["secrets"]
    broker = next(w for w in _k8s_workloads() if w["metadata"]["name"] == "watchfloor-mosquitto")
    pod = broker["spec"]["template"]["spec"]
    k8s_mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/mosquitto/config/passwd-services", "/mosquitto/data"} <= k8s_mounts
    assert accounts in " ".join(pod["initContainers"][0]["command"])
    api_pod = next(w for w in _k8s_workloads() if w["metadata"]["name"] == "watchfloor-api")["spec"]["template"]["spec"]
    ca = next(e["value"] for e in api_pod["containers"][0]["env"] if e["name"] == "WATCHFLOOR_DEVICE_ACCOUNTS_CA_FILE")
    assert any(ca.startswith(m["mountPath"]) for m in api_pod["containers"][0]["volumeMounts"])


def test_every_package_is_installed() -> None:
    """A non-editable install carries every package of the source tree: a package left out of
    [tool.setuptools] packages works from a checkout and fails once installed."""
    import tomllib

    from setuptools import find_packages

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == set(find_packages(where=str(ROOT), exclude=["tests", "tests.*", "bench", "bench.*"]))
