"""Content-Security-Policy and Permissions-Policy on every answer of the site."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path

from django.conf import settings

# Content-Security-Policy. The platform's pages load scripts only from its own static files
# (htmx, plotly, page scripts); styles may be inline (plotly and htmx insert <style> elements,
# bars are sized by style attributes). Nothing may frame a page, except that the patient page
# frames the viewer.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; frame-src 'self'; frame-ancestors 'none'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'"
)
# OHIF compiles its image decoders from WebAssembly, decodes in web workers started from blob:
# URLs, styles inline, and has two small inline scripts in index.html (allowed by their hashes,
# computed from the installed build). Its DICOM SEG loader builds array accessors with
# ``new Function`` (the ndarray package): without 'unsafe-eval' the segmentation never shows.
OHIF_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'{hashes}; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self' data: blob:; worker-src 'self' blob:; child-src 'self' blob:; "
    "frame-ancestors 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"
)
PERMISSIONS_POLICY = (
    "accelerometer=(), autoplay=(), camera=(), display-capture=(), geolocation=(), "
    "gyroscope=(), magnetometer=(), microphone=(), midi=(), payment=(), usb=(), "
    "fullscreen=(self)"
)
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


@functools.lru_cache(maxsize=4)
def _ohif_policy(index: Path, modified: float) -> str:  # noqa: ARG001 - the cache key
    hashes = "".join(
        " 'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in INLINE_SCRIPT.findall(index.read_bytes())
        if script.strip()
    )
    return OHIF_POLICY.format(hashes=hashes)


def ohif_policy() -> str:
    index = Path(settings.PMPD_OHIF_ROOT) / "index.html"
    try:
        modified = index.stat().st_mtime
    except FileNotFoundError:
        return OHIF_POLICY.format(hashes="")
    return _ohif_policy(index, modified)


class ContentSecurityPolicyMiddleware:
    """Content-Security-Policy and Permissions-Policy on every answer; a view that sets its own
    Content-Security-Policy keeps it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = (
                ohif_policy() if request.path.startswith("/ohif/") else PAGE_POLICY
            )
        response.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
