from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver

from .audit import record
from .models import AuditAction


@receiver(user_logged_in)
def _audit_login(sender, request, user, **kwargs):
    record(user, AuditAction.LOGIN)


@receiver(user_logged_out)
def _audit_logout(sender, request, user, **kwargs):
    if user is not None:
        record(user, AuditAction.LOGOUT)
