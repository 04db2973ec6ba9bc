from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "pmpd_web.demo"
    label = "demo"
    verbose_name = "Demo setup"
