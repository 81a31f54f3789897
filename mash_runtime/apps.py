from django.apps import AppConfig


class MashRuntimeConfig(AppConfig):
    name = "mash_runtime"
    verbose_name = "Mash runtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        post_spawn.connect(_sweep_on_spawn, dispatch_uid="mash_sweep_on_spawn")


def _sweep_on_spawn(sender, proc_name, **kwargs) -> None:
    # A worker spawns at cluster start and when the guard replaces a killed one: the
    # moment to recover requests whose worker died, without waiting for lease expiry.
    from mash_runtime.queue import enqueue_sweep

    enqueue_sweep()
