"""Kubernetes manifests for the prediction service and the stream processor of a project.

`maquette deploy kubernetes --image IMAGE` writes them; IMAGE is the bento containerized
(`maquette build`, then `bentoml containerize maquette_service:latest`). Settings reach the
pods as MAQUETTE_* environment variables, which override the bento's maquette.yaml: the Redis
Cluster's nodes in a ConfigMap; the cluster's password (or, on one Redis, its URL) and the
service's API key from a Secret the operator creates (`secret_command`), never written into a
manifest. The service listens on all interfaces in its pod, so it
requires the API key (the same check as on a machine).

What these are checked against here: the Kubernetes API schemas (`kubernetes-validate`, strict,
in tests/test_kubernetes.py). They were not applied to a cluster on this machine.
"""

from __future__ import annotations

import json
from typing import Any

from maquette.config import Settings
from maquette.data.secrets import redact, without_credentials
from maquette.errors import ConfigError

APP = "maquette"
SECRET = "maquette-secrets"
SETTINGS = "maquette-settings"


def secret_keys(settings: Settings) -> dict[str, str]:
    """The Secret's keys -> the environment variable each one sets: the Redis Cluster's
    password (or the one Redis's URL, which carries its password) and the service's API key,
    which every client of the service sends."""
    redis = (
        {"redis-password": "MAQUETTE_REDIS_PASSWORD"}
        if settings.redis.cluster
        else {"redis-url": "MAQUETTE_REDIS_URL"}
    )
    return {**redis, "api-key": "MAQUETTE_SERVING_API_KEY"}


def manifests(
    settings: Settings,
    image: str,
    replicas: int = 2,
    max_replicas: int = 10,
) -> list[dict[str, Any]]:
    """ConfigMap, service Deployment + Service + HorizontalPodAutoscaler, stream Deployment."""
    port = settings.serving.port
    config = {
        "MAQUETTE_SERVING_HOST": "0.0.0.0",  # in its pod; the Service is what others reach
        "MAQUETTE_SERVING_PORT": str(port),
    }
    if shared := settings.registry.shared_store:
        if without_credentials(shared) != shared:
            raise ConfigError(
                f"registry.shared_store {redact(shared)} holds credentials, which would be "
                "written into the ConfigMap.",
                "Give the store's credentials to the pods through their environment (e.g. "
                "AWS_ACCESS_KEY_ID in a Secret) and keep them out of the URL.",
            )
        # Where replicas import the versions promoted after the image was built.
        config["MAQUETTE_REGISTRY_SHARED_STORE"] = shared
    if settings.redis.cluster:
        config["MAQUETTE_REDIS_CLUSTER"] = json.dumps(settings.redis.cluster)
        config["MAQUETTE_REDIS_URL"] = ""  # a redis.url the bento's maquette.yaml may hold
    secrets = secret_keys(settings)
    service = _deployment(
        "maquette-service",
        secrets,
        image,
        replicas,
        ports=[{"name": "http", "containerPort": port}],
        probes={
            # Ready: models loaded and Redis answering; alive: the process answers at all.
            "readinessProbe": _probe("/readyz", port, period_s=5, failures=3),
            "livenessProbe": _probe("/healthz", port, period_s=10, failures=6),
            "startupProbe": _probe("/healthz", port, period_s=5, failures=60),
        },
        resources={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    )
    stream = _deployment(
        "maquette-stream",
        secrets,
        image,
        1,  # one processor per stream: its windows are the whole stream's
        command=["python", "-m", "maquette", "stream", "run"],
        resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(SETTINGS),
            "data": config,
        },
        service,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata("maquette-service"),
            "spec": {
                "selector": {"app": APP, "component": "maquette-service"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata("maquette-service"),
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "maquette-service",
                },
                "minReplicas": replicas,
                "maxReplicas": max(max_replicas, replicas),
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
        stream,
    ]


def secret_command(settings: Settings) -> str:
    """The kubectl command that creates the Secret the pods read (values from your shell)."""
    keys = secret_keys(settings).items()
    literals = " ".join(f'--from-literal={key}="${env}"' for key, env in keys)
    return f"kubectl create secret generic {SECRET} {literals}"


def _metadata(name: str) -> dict[str, Any]:
    return {"name": name, "labels": {"app": APP, "component": name}}


def _probe(path: str, port: int, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def _deployment(
    name: str,
    secrets: dict[str, str],
    image: str,
    replicas: int,
    ports: list[dict[str, Any]] | None = None,
    probes: dict[str, Any] | None = None,
    command: list[str] | None = None,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    env = [
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
        for key, variable in secrets.items()
    ]
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "envFrom": [{"configMapRef": {"name": SETTINGS}}],
        "env": env,
        "resources": resources or {},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }
    if command:
        container["command"] = command
    if ports:
        container["ports"] = ports
    container.update(probes or {})
    labels = {"app": APP, "component": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }
