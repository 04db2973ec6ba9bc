"""Template filters of the analytics pages, the report and the patient risk include."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


@register.filter
def script_json(text: str) -> SafeString:
    """JSON text safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` are
    written as JSON unicode escapes, so no value can close the element."""
    escaped = str(text).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return mark_safe(escaped)  # noqa: S308 - escaped above


@register.filter
def short_hash(value: str, length: int = 12) -> str:
    return str(value or "")[:length]
