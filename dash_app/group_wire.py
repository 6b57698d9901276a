"""DescribeGroups (Kafka API 15, v0) over a plain socket: the embedded broker's member lists.

Why not confluent-kafka's `describe_consumer_groups`: librdkafka 2.16 first asks the newer
ConsumerGroupDescribe API (69), and the embedded broker (Tansu) answers it for classic groups
with state STABLE, no members at all, and a member id where the assignor's name belongs
(measured). Its answer to the classic DescribeGroups request does list the members, by member
id only: client id, host, metadata and assignment come back empty (measured on v0 to v4). A
librdkafka member id is `<client.id>-<uuid>`, so the client id is its prefix. Used only against
the embedded broker, a single node that coordinates every group; on Apache Kafka the
AdminClient answers in full (see dash_app/pipeline_poller.py).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

API_DESCRIBE_GROUPS = 15


@dataclass
class Member:
    member_id: str
    client_id: str
    host: str
    assignment: dict[str, list[int]] = field(default_factory=dict)  # topic -> partitions; empty if not reported


@dataclass
class Group:
    group_id: str
    error: int
    state: str
    protocol_type: str
    protocol: str
    members: list[Member]


def describe_groups(address: str, groups: list[str], timeout: float = 2.0) -> list[Group]:
    host, _, port = address.split(",")[0].rpartition(":")
    body = struct.pack(">i", len(groups)) + b"".join(_string(g) for g in groups)
    request = struct.pack(">hhi", API_DESCRIBE_GROUPS, 0, 1) + _string("dashboard-pipeline") + body
    with socket.create_connection((host, int(port)), timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read(sock, 4))
        return parse_response(_read(sock, size))


def parse_response(data: bytes) -> list[Group]:
    r = _Reader(data)
    r.int32()  # correlation id
    out = []
    for _ in range(r.int32()):
        error, group_id, state, ptype, protocol = r.int16(), r.string(), r.string(), r.string(), r.string()
        members = []
        for _ in range(r.int32()):
            member_id, client_id, client_host = r.string(), r.string(), r.string()
            r.bytes()  # subscription metadata
            assignment = parse_assignment(r.bytes())
            members.append(Member(member_id, client_id or client_id_of(member_id), client_host, assignment))
        out.append(Group(group_id, error, state, ptype, protocol, members))
    return out


def parse_assignment(data: bytes | None) -> dict[str, list[int]]:
    """ConsumerProtocolAssignment: version, [topic, [partition]], user data."""
    if not data:
        return {}
    r = _Reader(data)
    r.int16()
    return {r.string(): [r.int32() for _ in range(r.int32())] for _ in range(r.int32())}


def client_id_of(member_id: str) -> str:
    """librdkafka names a member `<client.id>-<uuid4>` (36 characters)."""
    return member_id[:-37] if len(member_id) > 37 and member_id[-37] == "-" else member_id


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack(">h", len(data)) + data


def _read(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _unpack(self, fmt: str, size: int):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def int16(self) -> int:
        return self._unpack(">h", 2)

    def int32(self) -> int:
        return self._unpack(">i", 4)

    def string(self) -> str:
        n = self.int16()
        if n < 0:
            return ""
        self.pos += n
        return self.data[self.pos - n:self.pos].decode("utf-8", "replace")

    def bytes(self) -> bytes | None:
        n = self.int32()
        if n < 0:
            return None
        self.pos += n
        return self.data[self.pos - n:self.pos]
