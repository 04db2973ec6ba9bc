"""The OHIF viewer under /ohif/: its prebuilt files (from the npm package, rewritten for this
path by frontend/build.mjs into ``settings.PMPD_OHIF_ROOT``), behind the login.

OHIF is a single-page application: a path under /ohif/ that is not one of its files (its
routes, such as /ohif/viewer) answers index.html. Its responses may be framed by the
platform's own pages (the patient page embeds it), unlike every other page.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, HttpResponseNotModified
from django.utils.cache import patch_vary_headers
from django.utils.http import http_date
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_safe
from django.views.static import was_modified_since

CONTENT_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}
# These keep their names across rebuilds: browsers check them on every load. Other files are
# kept a day (most bundle names carry a content hash, the assets' do not).
NO_CACHE = {"index.html", "app-config.js"}
# A file's name ends in a short extension; OHIF's routes may end in a UID ("...1.2.840.3").
FILE_NAME = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")


def _file(root: Path, path: str) -> Path | None:
    """The file ``path`` names under ``root``, or None; never anything outside ``root``."""
    normalised = posixpath.normpath(path).lstrip("/")
    if normalised in ("", ".") or normalised.startswith("..") or "\\" in normalised:
        return None
    candidate = root / normalised
    return candidate if candidate.is_file() else None


def _serve(request, target: Path) -> HttpResponse:
    stat = target.stat()
    if not was_modified_since(request.headers.get("If-Modified-Since"), int(stat.st_mtime)):
        return HttpResponseNotModified()
    content_type = CONTENT_TYPES.get(target.suffix) or (
        mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    )
    compressed = target.with_name(target.name + ".gz")
    accepts_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    if accepts_gzip and compressed.is_file():
        response = FileResponse(compressed.open("rb"), content_type=content_type)
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = FileResponse(target.open("rb"), content_type=content_type)
    if compressed.is_file():
        patch_vary_headers(response, ["Accept-Encoding"])
    response.headers["Last-Modified"] = http_date(stat.st_mtime)
    response.headers["Cache-Control"] = (
        "private, no-cache" if target.name in NO_CACHE else "private, max-age=86400"
    )
    return response


@xframe_options_sameorigin
@login_required
@require_safe
def ohif(request, path: str = ""):
    root = Path(settings.PMPD_OHIF_ROOT)
    index = root / "index.html"
    if not index.is_file():
        return HttpResponse(
            "The image viewer is not built on this server: run `make frontend`.",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    target = _file(root, path)
    if target is not None:
        return _serve(request, target)
    if FILE_NAME.search(path):  # a file that the build does not have
        raise Http404("No such file in the viewer.")
    return _serve(request, index)
