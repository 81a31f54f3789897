from django.apps import AppConfig


class MashRuntimeConfig(AppConfig):
    name = "mash_runtime"
    verbose_name = "Mash runtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks
        from django_q.signals import post_spawn

        from mash_runtime.conf import check_settings

        checks.register(check_settings, "mash_settings")

        from mash_runtime.run import task_queue

        task_queue.install()

        post_spawn.connect(_on_worker_spawn, dispatch_uid="mash_worker_spawn")


def _on_worker_spawn(sender, proc_name, **kwargs) -> None:
    # In the new worker process's main thread: its runner starts (and its heartbeat row
    # with it) before it takes a task.
    from mash_runtime.run.runner import start_worker

    runner = start_worker()
    # A worker spawns at cluster start and when the guard replaces a killed one: the
    # moment to recover requests whose worker died, without waiting for lease expiry.
    from mash_runtime.queue import enqueue_sweep

    enqueue_sweep()
    # The agents' MCP servers connect now, so a server that is down shows at start.
    from mash_runtime.mcp_tools import warm_up_worker

    warm_up_worker(runner)
