"""`maquette deploy kubernetes`: manifests valid against the Kubernetes API schemas (offline,
kubernetes-validate, strict), probes on the service's own routes, no secret in any file.
Validated only: no Kubernetes cluster runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

from maquette.config import load_settings
from tests.conftest import ROOT, make_project

KUBERNETES = "1.30"


def test_the_manifests_are_valid_kubernetes_and_carry_no_secret(tmp_path: Path) -> None:
    folder = make_project(
        tmp_path / "project",
        None,
        redis={"cluster": ["10.0.0.1:7000", "10.0.0.2:7000"], "password": "cluster-password"},
        registry={"shared_store": "s3://models-bucket/maquette", "alias_store": "redis"},
        serving={"api_key": "the-api-key"},
    )
    out = tmp_path / "k8s.yaml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "maquette",
            "deploy",
            "kubernetes",
            "--image",
            "registry.example/maquette_service:v3",
            "--out",
            str(out),
            "--replicas",
            "3",
            "--project",
            str(folder),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "kubectl create secret generic maquette-secrets" in done.stdout
    text = out.read_text()
    for secret in ("cluster-password", "the-api-key"):
        assert secret not in text and secret not in done.stdout
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {
        ("ConfigMap", "maquette-settings"),
        ("Deployment", "maquette-service"),
        ("Service", "maquette-service"),
        ("HorizontalPodAutoscaler", "maquette-service"),
        ("Deployment", "maquette-stream"),
    }
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    service = by_name[("Deployment", "maquette-service")]["spec"]
    (container,) = service["template"]["spec"]["containers"]
    assert service["replicas"] == 3
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    config = by_name[("ConfigMap", "maquette-settings")]["data"]
    assert json.loads(config["MAQUETTE_REDIS_CLUSTER"]) == ["10.0.0.1:7000", "10.0.0.2:7000"]
    assert config["MAQUETTE_REGISTRY_SHARED_STORE"] == "s3://models-bucket/maquette"
    secret_env = {e["name"] for e in container["env"]}
    assert secret_env == {"MAQUETTE_REDIS_PASSWORD", "MAQUETTE_SERVING_API_KEY"}
    # What the pods' environment makes of the project's settings: the cluster, on 0.0.0.0,
    # its streams under the hash tag a cluster needs.
    settings = _settings_with(folder, {**config, "MAQUETTE_REDIS_PASSWORD": "from-the-secret"})
    assert settings.redis.cluster == ["10.0.0.1:7000", "10.0.0.2:7000"]
    assert settings.stream.stream == "{maquette:departures}"
    assert settings.registry.shared_store == "s3://models-bucket/maquette"
    assert settings.serving.host == "0.0.0.0"


def _settings_with(folder: Path, environment: dict[str, str]):  # type: ignore[no-untyped-def]
    import os

    saved = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        return load_settings(folder)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
