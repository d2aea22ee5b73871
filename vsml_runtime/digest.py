"""The step graph's integrity digest and its metadata, read straight from the ONNX bytes (standard library only).

An ONNX file is a protobuf ``ModelProto``. This module walks its top-level
fields (wire format only; no ``onnx`` package needed) to

* read ``metadata_props`` (field 14: ``StringStringEntryProto`` key 1,
  value 2) without ONNX Runtime, and
* compute the step digest: the sha256 of the raw bytes of every top-level
  field in file order (the graph with all its weights, the opsets, every
  metadata entry) except the one metadata entry that records the digest
  (``vsml.step_sha256``). The exporter records it; the runtime recomputes it
  and refuses a file whose digest differs (an edited weight or metadata
  value), so the recorded V_M hash can be trusted.

Every malformed input raises ``FormatError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from .format import K_STEP_SHA256, FormatError

_METADATA_FIELD = 14


def _varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FormatError(f"{where} is not a readable ONNX model: truncated or malformed protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(data: bytes, where: str = "model") -> Iterator[tuple[int, int, int, int, int]]:
    """Top-level protobuf fields: (field number, wire type, start, payload start, end) per field."""
    pos, n = 0, len(data)
    while pos < n:
        start = pos
        tag, pos = _varint(data, pos, where)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise FormatError(f"{where} is not a readable ONNX model: protobuf field number 0")
        if wire == 0:
            _, end = _varint(data, pos, where)
        elif wire == 1:
            end = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos, where)
            end = pos + length
        elif wire == 5:
            end = pos + 4
        else:
            raise FormatError(f"{where} is not a readable ONNX model: unsupported protobuf wire type {wire}")
        if end > n:
            raise FormatError(f"{where} is not a readable ONNX model: truncated protobuf field {number}")
        yield number, wire, start, pos, end
        pos = end


def _entry(data: bytes, where: str) -> tuple[str, str]:
    """(key, value) of one StringStringEntryProto."""
    key, value = b"", b""
    for number, wire, _, p0, p1 in fields(data, where):
        if wire == 2 and number == 1:
            key = data[p0:p1]
        elif wire == 2 and number == 2:
            value = data[p0:p1]
    try:
        return key.decode("utf-8"), value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: metadata is not valid UTF-8: {exc}") from exc


def _walk(data: bytes, where: str) -> tuple[dict[str, str], str]:
    props: dict[str, str] = {}
    h = hashlib.sha256()
    for number, wire, start, p0, p1 in fields(data, where):
        if number == _METADATA_FIELD:
            if wire != 2:
                raise FormatError(f"{where}: malformed metadata entry")
            key, value = _entry(data[p0:p1], where)
            if key in props:
                raise FormatError(f"{where}: metadata key {key!r} appears twice")
            props[key] = value
            if key == K_STEP_SHA256:
                continue
        h.update(data[start:p1])
    return props, h.hexdigest()


def metadata(data: bytes, where: str = "model") -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file's bytes, as a dict (FormatError if malformed)."""
    return _walk(data, where)[0]


def step_digest(data: bytes, where: str = "model") -> str:
    """The step digest of an ONNX file's bytes (hex sha256; see the module doc)."""
    return _walk(data, where)[1]


def check_step_digest(data: bytes, where: str = "model") -> dict[str, str]:
    """The metadata of a step graph whose recorded digest matches its bytes; FormatError otherwise."""
    props, digest = _walk(data, where)
    recorded = props.get(K_STEP_SHA256)
    if recorded is None:
        raise FormatError(f"{where} records no step digest ({K_STEP_SHA256}): re-export it with this vsml-export")
    if recorded != digest:
        raise FormatError(
            f"{where} was changed after export (step digest {digest[:12]}..., recorded {recorded[:12]}...)"
        )
    return props
