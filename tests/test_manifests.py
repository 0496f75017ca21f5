"""The Kubernetes manifests (docs/deploy/k8s) are valid resources, and the config they carry is a valid,
protected edgecollab config whose keys match the secrets they mount. They are not deployed here."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from edgecollab.config import parse_config
from edgecollab.gateway import check_exposure

from .conftest import REPO

MANIFESTS = sorted((REPO / "docs" / "deploy" / "k8s").glob("*.yaml"))
# K3s and Kubernetes releases the manifests are checked against: one a year old, and the newest known.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def resources() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_a_valid_resource(version: str) -> None:
    assert {r["kind"] for r in resources()} == {"ConfigMap", "Deployment", "Service", "DaemonSet"}
    for resource in resources():
        kubernetes_validate.validate(resource, version, strict=True)  # raises ValidationError naming the field


def test_the_config_map_holds_a_valid_protected_config_whose_keys_match_the_secrets() -> None:
    text = named("ConfigMap", "edgecollab-config")["data"]["cluster.toml"]
    config = parse_config(tomllib.loads(text), Path("/etc/edgecollab/config/cluster.toml"))
    check_exposure(config.gateway)  # binds 0.0.0.0, so it must have TLS and a token
    assert config.security.curve and config.gateway.start is False  # the gateway is a Deployment of its own
    volumes = {
        v["name"]: v for v in named("Deployment", "edgecollab-coordinator")["spec"]["template"]["spec"]["volumes"]
    }
    allowed = {item["path"] for item in volumes["authorized"]["secret"]["items"]}
    client = Path(str(config.security.client_key)).name.removesuffix("_secret")
    assert allowed == {f"{n.name}.key" for n in config.nodes} | {client}  # every board and the gateway, no one else
    assert all(str(n.key) == f"/etc/edgecollab/keys/{n.name}.key_secret" for n in config.nodes)


def test_workers_run_on_labelled_boards_under_their_node_name() -> None:
    spec = named("DaemonSet", "edgecollab-worker")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"edgecollab.io/board": "true"}
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    coordinator = named("Deployment", "edgecollab-coordinator")["spec"]["template"]["spec"]
    assert coordinator["nodeSelector"] == {"edgecollab.io/role": "coordinator"}


def test_a_site_coordinator_runs_in_its_node_pool_and_joins_the_parent_as_a_node() -> None:
    site_map = named("ConfigMap", "edgecollab-site-config")
    site = parse_config(tomllib.loads(site_map["data"]["cluster.toml"]), Path("/etc/edgecollab/config/cluster.toml"))
    parent = parse_config(
        tomllib.loads(named("ConfigMap", "edgecollab-config")["data"]["cluster.toml"]),
        Path("/etc/edgecollab/config/cluster.toml"),
    )
    assert site.coordinator.site in {n.name for n in parent.nodes}  # the parent lists the site as a node
    assert site.coordinator.parent == "tcp://edgecollab-coordinator.edgecollab.svc.cluster.local:5555"
    namespace = site_map["metadata"]["namespace"]
    coordinator = named("Deployment", "edgecollab-site-coordinator")
    pool = coordinator["spec"]["template"]["spec"]["nodeSelector"]["apps.openyurt.io/nodepool"]
    workers = named("DaemonSet", "edgecollab-site-worker")["spec"]["template"]["spec"]
    assert workers["nodeSelector"]["apps.openyurt.io/nodepool"] == pool == site.coordinator.site
    assert {
        coordinator["metadata"]["namespace"],
        named("DaemonSet", "edgecollab-site-worker")["metadata"]["namespace"],
    } == {namespace}
    mounted = {
        f"{m['mountPath']}/{item['path']}"
        for v in coordinator["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
        for m in coordinator["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        if m["name"] == v["name"]
        for item in v["secret"]["items"]
    }
    assert {site.coordinator.parent_key, site.coordinator.parent_public_key, site.security.client_key} <= mounted
