"""Parse, check and flatten an API user in one pass: the file replay's fast path.

A user decoded by msgspec into structs generated from :data:`schema.FIELDS`
is well formed by construction (every required field present, of its type,
not empty), and only the carried fields are ever built: the API's hashes and
picture URLs are skipped while parsing. The result is the user's row in
column order, exactly what ``validate.check_rows`` makes of the same record
(``tests/test_sources.py`` holds the two to each other on generated and
broken users). Anything the typed decoder refuses, the caller parses and
checks the general way, which gives the reason; so this path decides only
how fast a good record goes, never whether a record is good.

It costs ~3.6 µs a user against ~7.4 for orjson + ``check_rows`` (measured
on the benchmark's replay file, 100 records at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from ..schema import FIELDS, INT_MAX, INT_MIN, MAX_TEXT, MAY_BE_EMPTY, Field, Row

#: orjson reads integers beyond 64 bits as floats (quarantined as ``type:``); an integer
#: outside int64 is left to the general path, which then decides as it always did.
_INT = Annotated[int, msgspec.Meta(ge=INT_MIN, le=INT_MAX)]
_TEXT = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
_MAYBE_EMPTY = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


def _annotation(f: Field) -> Any:
    if f.kind == "int":
        return _INT
    if f.kind == "str|int":
        return _TEXT | _INT
    if not f.required:
        return _MAYBE_EMPTY | None  # null or absent: the defaults check_records fills
    return _MAYBE_EMPTY if f.path in MAY_BE_EMPTY else _TEXT


def _build() -> tuple[type, Callable[[Any], Row]]:
    """The user struct (nested, from FIELDS) and a generated function giving its row."""
    tree: dict[str, Any] = {}
    for f in FIELDS:
        node = tree
        *parents, leaf = f.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = f

    def struct(name: str, node: dict[str, Any]) -> tuple[type, bool]:
        fields: list[Any] = []
        optional = True
        for key, value in node.items():
            if isinstance(value, dict):
                sub, sub_optional = struct(f"{name}_{key}", value)
                if sub_optional:  # every field optional ("id"): the node may be null or absent
                    fields.append((key, sub | None, None))
                else:
                    fields.append((key, sub))
                    optional = False
            elif value.required:
                fields.append((key, _annotation(value)))
                optional = False
            else:
                fields.append((key, _annotation(value), None))
        # Required fields first: a struct's defaults must come last.
        fields.sort(key=lambda fl: isinstance(fl, tuple) and len(fl) == 3)
        return msgspec.defstruct(name, fields), optional

    user, _ = struct("ApiUser", tree)
    # The row, in column order. An absent or null optional field reads as check_records'
    # default: "" for id.name, None for id.value.
    lines = ["def row(u):"]
    exprs: list[str] = []
    for f in FIELDS:
        parts = f.path.split(".")
        if f.required:
            exprs.append("u." + ".".join(parts))
        else:
            parent, leaf = "u." + ".".join(parts[:-1]), parts[-1]
            default = '""' if f.path == "id.name" else "None"
            expr = f"{parent}.{leaf}" + (' or ""' if f.path == "id.name" else "")
            exprs.append(f"({default} if {parent} is None else {expr})")
    lines.append("    return (" + ", ".join(exprs) + ",)")
    scope: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<typed.row>", "exec"), scope)  # noqa: S102
    return user, scope["row"]


ApiUser, _row = _build()
_decode: Callable[[bytes], Any] = msgspec.json.Decoder(ApiUser).decode
#: What the decoder raises for a record it does not take.
REFUSED = (msgspec.ValidationError, msgspec.DecodeError)


def decode_row(line: bytes) -> Row:
    """The row of one JSON-encoded API user, or raise one of :data:`REFUSED`."""
    return _row(_decode(line))  # type: ignore[no-any-return]
