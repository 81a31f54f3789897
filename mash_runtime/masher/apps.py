from django.apps import AppConfig


class MasherConfig(AppConfig):
    name = "mash_runtime.masher"
    label = "masher"
    verbose_name = "Masher (trace digests and eval records)"
    default_auto_field = "django.db.models.BigAutoField"
