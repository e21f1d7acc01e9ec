"""The online store on a Redis Cluster: `redis.cluster: [host:port, ...]` in maquette.yaml.

Feast's key layout does not change on a cluster (one hash per entity key and project), so
`get_online_features` reads what Maquette writes; each key's hash slot decides the master that
holds it. Maquette's raw pipelines (the online reader, the materialize writer) keep their
packed commands and send each master the ones whose keys it holds, then put the replies back in
command order (`RoutedPipe`); a MOVED or ASK reply (slots resharded under way) reloads the slot
map and sends those commands again. Feast gets `redis_type: redis_cluster` with the same nodes.

The project's other Redis data (the prediction log, the event streams and the processor's
state, the alias table) goes through `shared_client`: redis-py's cluster client when a cluster
is configured, one Redis otherwise. Keys that one transaction touches share a hash tag.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from maquette.config import Settings
from maquette.data.redis_server import cluster_node_url, redis_url, unreachable
from maquette.data.secrets import redact
from maquette.errors import StoreUnavailable
from maquette.features import redis_layout as wire

SLOTS = 16384
# What redis-py's cluster client raises when the cluster (or a slot's master) is down.
CLUSTER_DOWN = (RedisClusterException, ClusterError)
# Of those, the ones that pass by themselves: a slot without a master, a failover, a reshard,
# and no node answering (redis-py re-reads the slot map after a connection error, and raises
# RedisClusterException "cannot be connected" when every node refuses). Keys sharing a hash
# tag, checked in the settings, keep CROSSSLOT (the other RedisClusterException) away.
CLUSTER_UNAVAILABLE = (
    ClusterDownError,
    MasterDownError,
    SlotNotCoveredError,
    TryAgainError,
    RedisClusterException,
)
# Commands whose slot an online reader remembers (~100 bytes each), before starting over.
REMEMBERED_COMMANDS = 100_000


def is_cluster(settings: Settings) -> bool:
    return bool(settings.redis.cluster)


def cluster_nodes(settings: Settings) -> list[tuple[str, int]]:
    """The configured seed nodes as (host, port)."""
    nodes = []
    for text in settings.redis.cluster:
        host, _, port = text.rpartition(":")
        nodes.append((host, int(port)))
    return nodes


def _password(settings: Settings) -> str | None:
    secret = settings.redis.password
    return secret.get_secret_value() if secret is not None else None


# A redis:// URL of one node (it holds the password: show it only redacted).
node_url = cluster_node_url


def cluster_client(settings: Settings, timeout_s: float = 5.0) -> RedisCluster[bytes]:
    """redis-py's cluster client over the configured nodes (routes each command by slot;
    MOVED and ASK are followed). It does not retry a failed command: a request's budget is
    one timeout, and the callers say what failed (StoreUnavailable when no node answers)."""
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(settings)],
            password=_password(settings),
            socket_timeout=timeout_s,
            socket_connect_timeout=min(timeout_s, 2.0),
            retry=Retry(NoBackoff(), 0),
        )
    except CLUSTER_DOWN as exc:  # it reads the slot map when made
        raise unreachable(settings, exc) from exc


def shared_client(settings: Settings, timeout_s: float = 5.0) -> redis.Redis[bytes]:
    """The client of the prediction log, the event streams, the processor's state and the
    alias table: the cluster's (routes each command by its key's slot) or the one Redis's.
    Typed as redis.Redis: the commands Maquette sends are the same on both."""
    if is_cluster(settings):
        return cluster_client(settings, timeout_s)  # type: ignore[return-value]
    return redis.Redis.from_url(
        redis_url(settings), socket_timeout=timeout_s, socket_connect_timeout=min(timeout_s, 2.0)
    )


def shared_store(settings: Settings) -> str:
    """Where `shared_client` connects, for messages (credentials redacted)."""
    if is_cluster(settings):
        return f"the Redis Cluster at {', '.join(settings.redis.cluster)}"
    return f"Redis at {redact(redis_url(settings))}"


def raw_pipe(
    settings: Settings, timeout_s: float = 60.0, remember: bool = False
) -> wire.RespWriter | RoutedPipe:
    """A raw pipelined connection to the online store: one Redis, or every master of the
    cluster (`RoutedPipe.round_trip`; `remember`: see `RoutedPipe.slot`)."""
    if is_cluster(settings):
        return RoutedPipe(settings, timeout_s, remember)
    return wire.RespWriter(redis_url(settings), timeout_s)


def command_key(command: bytes) -> bytes:
    """The key of a packed command (`*N $len NAME $len KEY ...`): its second argument."""
    at = command.index(b"\r\n") + 2  # past *N
    end = command.index(b"\r\n", at)
    at = end + 2 + int(command[at + 1 : end]) + 2  # past the command's name
    end = command.index(b"\r\n", at)
    return command[end + 2 : end + 2 + int(command[at + 1 : end])]


class RoutedPipe:
    """Pipelined commands on a cluster: each master gets the commands whose keys it holds, on
    a raw connection of its own; replies come back in command order."""

    def __init__(self, settings: Settings, timeout_s: float = 60.0, remember: bool = False) -> None:
        self.settings, self.timeout_s, self.remember = settings, timeout_s, remember
        self.slots: dict[bytes, int] = {}
        self.owner: list[tuple[str, int]] = []
        self.conns: dict[tuple[str, int], wire.RespWriter] = {}
        self.reload()

    def reload(self) -> None:
        """Read which master holds each slot (CLUSTER SLOTS from the first node answering)."""
        failures, uncovered = [], 0
        for host, port in dict.fromkeys([*self.conns, *cluster_nodes(self.settings)]):
            client = redis.Redis.from_url(
                node_url(self.settings, host, port),
                socket_timeout=min(self.timeout_s, 5.0),
                socket_connect_timeout=2.0,
            )
            try:
                ranges = client.execute_command("CLUSTER SLOTS")
            except redis.RedisError as exc:
                failures.append(f"{host}:{port}: {exc}")
                continue
            finally:
                client.close()
            owner: list[tuple[str, int] | None] = [None] * SLOTS
            for first, last, master, *_ in ranges:
                address = (_text(master[0]) or host, int(master[1]))
                owner[first : last + 1] = [address] * (last - first + 1)
            if any(o is None for o in owner):  # this node's view may be behind: ask the next
                uncovered = max(uncovered, sum(o is None for o in owner))
                continue
            self.owner = [o for o in owner if o is not None]
            return
        if uncovered:
            raise StoreUnavailable(
                f"the Redis Cluster serves no master for {uncovered:,} of its {SLOTS:,} hash "
                "slots: the keys there can be neither read nor written.",
                "Check `redis-cli cluster info` on a node: a master is down or slots are "
                "unassigned; Maquette serves again once every slot has a master.",
            )
        raise StoreUnavailable(
            "no node of the Redis Cluster answered: " + "; ".join(failures),
            "Check redis.cluster in maquette.yaml and that the cluster's nodes run.",
        )

    def round_trip(
        self, commands: Sequence[bytes], slots: Sequence[int] | None = None
    ) -> list[Any]:
        """Each command's reply, in order; error replies raise StoreUnavailable. `slots`: each
        command's hash slot when the caller knows it (else read from the command's key)."""
        slots = slots if slots is not None else [self.slot(c) for c in commands]
        try:
            replies = self._send(commands, slots, range(len(commands)))
            reloaded = False
            for _attempt in range(3):
                redirected = [i for i, r in enumerate(replies) if _redirected(r)]
                if not redirected:
                    break
                asked = [i for i in redirected if str(replies[i]).startswith("ASK")]
                for i in asked:  # a slot being migrated: this key is asked for on its target
                    replies[i] = self._asking(commands[i], str(replies[i]))
                moved = [i for i in redirected if i not in set(asked)]
                if moved:
                    for i in moved:  # "MOVED slot host:port": that slot's master now
                        self.owner[slots[i]] = _address(str(replies[i]))
                    if not reloaded:  # a failover or reshard moves many slots: one reload
                        self.reload()
                        reloaded = True
                    for i, reply in zip(moved, self._send(commands, slots, moved), strict=True):
                        replies[i] = reply
        except BaseException:
            # Replies may be left unread on some master's connection: none is reused.
            self.close()
            raise
        if errors := [r for r in replies if isinstance(r, hiredis.ReplyError)]:
            if down := [e for e in errors if str(e).startswith("CLUSTERDOWN")]:
                raise ClusterDown(self.settings, str(down[0]))
            raise StoreUnavailable(
                f"Redis refused {len(errors)} of {len(commands)} commands: {errors[0]}",
                "Check the cluster's state (`redis-cli cluster info`) and memory.",
            )
        return replies

    def _asking(self, command: bytes, reply: str) -> Any:
        """ASKING, then the command, on the node an ASK reply names; the command's reply."""
        conn = self._conn(_address(reply))
        conn.send(b"*1\r\n$6\r\nASKING\r\n" + command)
        return conn.raw_replies(2)[1]

    def slot(self, command: bytes) -> int:
        """The hash slot of a command's key; remembered per command when `remember` (online
        reads send the same HMGETs again and again)."""
        if not self.remember:
            return int(key_slot(command_key(command)))
        found = self.slots.get(command)
        if found is None:
            if len(self.slots) >= REMEMBERED_COMMANDS:
                self.slots.clear()
            found = self.slots[command] = int(key_slot(command_key(command)))
        return found

    def _send(
        self, commands: Sequence[bytes], slots: Sequence[int], which: Sequence[int]
    ) -> list[Any]:
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        owner = self.owner
        for i in which:
            groups[owner[slots[i]]].append(i)
        for node, members in groups.items():  # every node works while the next is sent to
            self._conn(node).send(b"".join([commands[i] for i in members]))
        out: dict[int, Any] = {}
        for node, members in groups.items():
            out.update(zip(members, self._conn(node).raw_replies(len(members)), strict=True))
        return [out[i] for i in which]

    def _conn(self, node: tuple[str, int]) -> wire.RespWriter:
        if node not in self.conns:
            self.conns[node] = wire.RespWriter(node_url(self.settings, *node), self.timeout_s)
        return self.conns[node]

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


class ClusterDown(StoreUnavailable):
    """The cluster refuses every key (CLUSTERDOWN): a master is gone and no replica took over
    its slots (Redis's default, cluster-require-full-coverage yes, stops the whole cluster)."""

    def __init__(self, settings: Settings, reply: str) -> None:
        super().__init__(
            f"the Redis Cluster at {', '.join(settings.redis.cluster)} is down ({reply}): a "
            "master is unreachable and no replica took over its slots, so no key can be read "
            "or written until it is back.",
            "Restart the master that stopped (its log says why) or give each master a "
            "replica to take over; Maquette serves again by itself once every slot has a master.",
        )


def _redirected(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(("MOVED", "ASK"))


def _address(reply: str) -> tuple[str, int]:
    """The node of a MOVED or ASK reply (`MOVED 3999 127.0.0.1:6381`)."""
    host, _, port = reply.split()[2].rpartition(":")
    return host, int(port)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
