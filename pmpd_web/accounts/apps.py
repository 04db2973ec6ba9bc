from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "pmpd_web.accounts"
    label = "accounts"
    verbose_name = "Accounts, roles and audit trail"

    def ready(self) -> None:
        from . import signals  # noqa: F401
