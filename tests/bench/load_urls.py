"""The platform's URLs and /bench/hello/: a bare Django view (the whole middleware stack, no
database, no template), the floor under every page of the load benchmark."""

from django.http import HttpResponse
from django.urls import include, path


def hello(request):
    return HttpResponse(b"hello", content_type="text/plain")


urlpatterns = [
    path("bench/hello/", hello),
    path("", include("pmpd_web.urls")),
]
