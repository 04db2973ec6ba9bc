from axes.signals import user_locked_out
from axes.utils import reset as reset_failed_logins
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import pre_save
from django.dispatch import receiver

from .audit import record
from .lockout import client_address
from .middleware import start_session_clock
from .models import AuditAction
from .tokens import revoke_all


@receiver(user_logged_in)
def _audit_login(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        start_session_clock(request.session)
    reset_failed_logins(username=user.get_username())
    record(user, AuditAction.LOGIN)


@receiver(user_logged_out)
def _audit_logout(sender, request, user, **kwargs):
    if user is not None:
        record(user, AuditAction.LOGOUT)


@receiver(user_login_failed)
def _audit_failed_login(sender, credentials, request=None, **kwargs):
    record(
        None,
        AuditAction.LOGIN_FAILED,
        username=str(credentials.get("username", "")) or "(no username)",
        address=client_address(request) if request is not None else "",
    )


@receiver(user_locked_out)
def _audit_lockout(sender, request, username, ip_address, **kwargs):
    record(
        None,
        AuditAction.LOGIN_LOCKED_OUT,
        username=username or "(no username)",
        address=ip_address or "",
    )


@receiver(pre_save, sender=settings.AUTH_USER_MODEL)
def _revoke_tokens_on_password_change(sender, instance, update_fields=None, **kwargs):
    """A new password ends every API token of the user, however it was set (the password
    page, the admin, ``manage.py changepassword``)."""
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    old = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    if old is not None and old != instance.password:
        revoked = revoke_all(instance)
        record(instance, AuditAction.PASSWORD_CHANGE, revoked_api_tokens=revoked)
