"""JSON request bodies with a nesting limit and without NUL characters.

Python's JSON decoder recurses once per level: a body nested 100,000 deep ended in a
RecursionError (a server error). PostgreSQL cannot store a NUL character in text.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def check_json_value(value, *, max_depth: int) -> None:
    """Raise ValueError naming the place of the first level beyond ``max_depth`` or the first
    string with a NUL character; walks without recursion."""
    pending = [(value, 1, "$")]
    while pending:
        item, depth, where = pending.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels at {where}.")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and "\x00" in key:
                    raise ValueError(f"JSON key at {where} contains a NUL character.")
                pending.append((child, depth + 1, f"{where}[{key!r}]"))
        elif isinstance(item, str) and "\x00" in item:
            raise ValueError(f"JSON string at {where} contains a NUL character.")


class DepthLimitedJSONParser(JSONParser):
    """DRF's JSON parser, refusing (400) bodies nested deeper than PMPD_JSON_MAX_DEPTH levels or
    holding NUL characters."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError(
                f"JSON parse error - nested deeper than {settings.PMPD_JSON_MAX_DEPTH} levels."
            ) from exc
        try:
            check_json_value(data, max_depth=settings.PMPD_JSON_MAX_DEPTH)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        return data
