"""Make an API token for a user (site admins; users make their own on the "API tokens" page)."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from pmpd_web.accounts.audit import record
from pmpd_web.accounts.models import AuditAction
from pmpd_web.accounts.tokens import create_token


class Command(BaseCommand):
    help = "Make an API token for USERNAME and print its key (shown this once, never stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="made by manage.py create_api_token")
        parser.add_argument(
            "--days",
            type=int,
            default=settings.PMPD_API_TOKEN_MAX_DAYS,
            help=f"valid this many days (1..{settings.PMPD_API_TOKEN_MAX_DAYS})",
        )

    def handle(self, *args, username, name, days, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        try:
            made = create_token(user, name=name, days=days)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        record(user, AuditAction.CREATE_API_TOKEN, label=str(made.token), via="manage.py")
        self.stderr.write(f"Token for {username}, valid until {made.token.expires_at:%Y-%m-%d}:")
        self.stdout.write(made.key)
