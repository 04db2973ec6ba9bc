"""A page's answer when the job queue is down as a job starts: 503 with the honest message
(the job is saved and starts when the queue is back) instead of a bare server error. The API
answers the same through DRF (``JobQueueUnavailable`` is an API exception)."""

from __future__ import annotations

from django.shortcuts import render

from .dispatch import JobQueueUnavailable


class JobQueueUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, JobQueueUnavailable):
            return None
        response = render(
            request, "jobs/queue_unavailable.html", {"job": exception.job}, status=503
        )
        response["Retry-After"] = "60"
        return response
