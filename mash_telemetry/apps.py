from django.apps import AppConfig


class MashTelemetryConfig(AppConfig):
    name = "mash_telemetry"
    verbose_name = "Mash telemetry"

    def ready(self):
        # OpenTelemetry export only when OTEL_EXPORTER_OTLP_ENDPOINT asks for it; without it
        # nothing connects and `opentelemetry` is never imported.
        from mash_telemetry import otel

        otel.install_from_environment()
