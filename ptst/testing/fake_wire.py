"""The API's wire format as the fake server writes and reads it: error bodies, JSON bodies, cursor pages, multipart
uploads. Standard library only."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any


def error_body(message: str, type_: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def json_body(body: bytes) -> dict[str, Any]:
    try:
        v = json.loads(body or b"{}")
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def list_page(
    items: list[dict[str, Any]], query: dict[str, list[str]], default_limit: int = 20, first_last: bool = False
) -> dict[str, Any]:
    """Cursor pagination as the API does it: `after` is the id of the last item of the previous page. Some lists
    (checkpoints) also carry `first_id`/`last_id`."""
    after: str | None = (query.get("after") or [None])[0]  # type: ignore[list-item]
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    limit = int((query.get("limit") or [str(default_limit)])[0])
    page = items[:limit]
    out: dict[str, Any] = {"object": "list", "data": page, "has_more": len(items) > limit}
    if first_last:
        out.update(first_id=page[0]["id"] if page else None, last_id=page[-1]["id"] if page else None)
    return out


def multipart_fields(body: bytes, ctype: str) -> dict[str, tuple[str | None, bytes]]:
    msg = email.message_from_bytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body, policy=email.policy.HTTP)
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts() if msg.is_multipart() else []:
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            out[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return out
