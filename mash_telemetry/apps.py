from django.apps import AppConfig


class MashTelemetryConfig(AppConfig):
    name = "mash_telemetry"
    verbose_name = "Mash telemetry"

    def ready(self):
        # OpenTelemetry export only when OTEL_EXPORTER_OTLP_ENDPOINT asks for it; without it
        # nothing connects and `opentelemetry` is never imported.
        from mash_telemetry import otel

        otel.install_from_environment()

        from mash_runtime.retention import HistoryTable, register_history_table
        from mash_telemetry.models import ApiRequestLog

        register_history_table(HistoryTable(
            label="API log rows", keep_flag="keep-api-log",
            keep_help="Leave the API request log alone (delete only runtime history).", prune=ApiRequestLog.prune))
