"""Feast's online-store settings for Maquette's Redis or Redis Cluster.

Built in memory from the settings (they carry the password), never written into
feature_store.yaml: `repo_config` hands them to Feast.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlparse

from maquette.config import Settings
from maquette.data.redis_server import redis_url
from maquette.errors import ConfigError
from maquette.features.redis_cluster import cluster_nodes, is_cluster


def feast_online_store(settings: Settings) -> dict[str, str]:
    """`online_store:` of Feast's RepoConfig: `redis`, or `redis_cluster` over its nodes."""
    if not is_cluster(settings):
        return {"type": "redis", "connection_string": feast_connection_string(redis_url(settings))}
    parts = [f"{host}:{port}" for host, port in cluster_nodes(settings)]
    secret = settings.redis.password
    if secret is not None:
        parts.append(f"password={_feast_value(secret.get_secret_value(), 'password')}")
    return {"type": "redis", "redis_type": "redis_cluster", "connection_string": ",".join(parts)}


def _feast_value(value: str, what: str) -> str:
    # Feast splits the string on commas, then JSON-decodes each value when it can: a password
    # `123` or `true` would arrive as a number or a bool, so those go JSON-quoted.
    if "," in value:
        raise ConfigError(
            f"the Redis {what} contains a comma, which Feast's connection string cannot carry.",
            "Choose a Redis password (redis.password or the one in redis.url) without commas.",
        )
    try:
        json.loads(value)
    except ValueError:
        return value
    return json.dumps(value)


def feast_connection_string(url: str) -> str:
    """Feast's `host:port,db=N,password=...` form of a redis:// URL (it holds the password:
    give it to Feast in memory, never write it into feature_store.yaml)."""
    parsed = urlparse(url)
    parts = [f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"]
    db = (parsed.path or "/0").lstrip("/") or "0"
    if db != "0":
        parts.append(f"db={db}")
    # redis-py percent-decodes the URL's credentials; Feast gets them decoded.
    if parsed.password:
        parts.append(f"password={_feast_value(unquote(parsed.password), 'password')}")
    if parsed.username:
        parts.append(f"username={_feast_value(unquote(parsed.username), 'user name')}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)
