"""Page decorators built on the one permission check."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404

from pmpd_web.accounts.permissions import Action, require

from .models import Cohort


def cohort_page(action: Action):
    """Login required; load ``cohort_id`` into ``request.cohort``; check ``action`` there."""

    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request, cohort_id: int, *args, **kwargs):
            require(request.user, cohort_id, action)
            request.cohort = get_object_or_404(Cohort, pk=cohort_id)
            return view(request, request.cohort, *args, **kwargs)

        return wrapper

    return decorator
