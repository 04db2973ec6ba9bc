from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = "Analytics"

    def ready(self) -> None:
        # The patients table (cohorts app) shows the results without importing analytics.
        from analytics.cohort_results import cohort_results
        from pmpd_web.cohorts import results

        results.register(cohort_results)
