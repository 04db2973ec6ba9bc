"""ReDoc's script as the API reference page loads it: the sidecar package's bundle with the one
address it would fetch from the internet (Redocly's logo) pointed at a local file."""

from __future__ import annotations

from functools import cache

from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.http import Http404, HttpResponse
from django.templatetags.static import static
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

BUNDLE = "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
REMOTE_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@cache
def _local_bundle() -> str:
    path = finders.find(BUNDLE)
    if path is None:
        raise Http404("The ReDoc bundle (drf-spectacular-sidecar) is not installed.")
    with open(path, encoding="utf-8") as handle:
        return handle.read().replace(REMOTE_LOGO, static("pmpd/redoc-logo.svg"))


@require_safe
@login_required
@cache_control(private=True, max_age=86400)
def redoc_bundle(request):
    return HttpResponse(_local_bundle(), content_type="text/javascript; charset=utf-8")
