from django.db import migrations

SWEEP_NAME = "mash-sweep"


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    # Idempotent: a re-run (or a schedule an operator tuned in the admin) is left alone.
    Schedule.objects.get_or_create(
        name=SWEEP_NAME,
        defaults={"func": "mash_runtime.sweeper.sweep", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=SWEEP_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("mash_runtime", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
