"""Decodes the few protobuf request bodies kubectl sends: ``kubectl create serviceaccount`` and
``kubectl create token`` use typed clients that post ``application/vnd.kubernetes.protobuf``.

Only ServiceAccount and TokenRequest bodies (and the ObjectMeta fields name, generateName, namespace,
labels, annotations) are understood; other protobuf bodies get 415. Responses are always JSON, which
these clients accept.
"""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint value or length-delimited bytes) in order."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(buf, i)
            out.append((num, v))
        elif wire == 2:
            n, i = _varint(buf, i)
            out.append((num, buf[i : i + n]))
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _str(v: int | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _map_entry(v: int | bytes) -> tuple[str, str]:
    kv = dict(fields(v)) if isinstance(v, bytes) else {}
    return _str(kv.get(1, b"")), _str(kv.get(2, b""))


def _meta(buf: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    names = {1: "name", 2: "generateName", 3: "namespace"}
    for num, v in fields(buf):
        if num in names:
            meta[names[num]] = _str(v)
        elif num in (11, 12):
            k, val = _map_entry(v)
            meta.setdefault("labels" if num == 11 else "annotations", {})[k] = val
    return meta


def decode(body: bytes) -> dict[str, Any]:
    if not body.startswith(MAGIC):
        raise ProtobufError("no k8s protobuf magic prefix")
    unknown = dict(fields(body[len(MAGIC) :]))
    tm = unknown.get(1, b"")
    type_meta = dict(fields(tm)) if isinstance(tm, bytes) else {}
    api_version, kind = _str(type_meta.get(1, b"")), _str(type_meta.get(2, b""))
    raw = unknown.get(2, b"")
    if not isinstance(raw, bytes):
        raise ProtobufError("no raw object")
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": {}}
    if kind == "ServiceAccount":
        for num, v in fields(raw):
            if num == 1 and isinstance(v, bytes):
                obj["metadata"] = _meta(v)
        return obj
    if kind == "TokenRequest":
        spec: dict[str, Any] = {}
        for num, v in fields(raw):
            if num == 1 and isinstance(v, bytes):
                obj["metadata"] = _meta(v)
            elif num == 2 and isinstance(v, bytes):
                for snum, sv in fields(v):
                    if snum == 1:
                        spec.setdefault("audiences", []).append(_str(sv))
                    elif snum == 4 and isinstance(sv, int):
                        spec["expirationSeconds"] = sv
                    elif snum == 3 and isinstance(sv, bytes):
                        ref_names = {1: "kind", 2: "apiVersion", 3: "name", 4: "uid"}
                        spec["boundObjectRef"] = {
                            ref_names[n]: _str(x) for n, x in fields(sv) if n in ref_names
                        }
        obj["spec"] = spec
        return obj
    raise ProtobufError(f"protobuf bodies of kind {kind!r} are not understood by this test server; send JSON")
