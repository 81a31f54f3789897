from django.apps import AppConfig


class MashTelemetryConfig(AppConfig):
    name = "mash_telemetry"
    verbose_name = "Mash telemetry"
