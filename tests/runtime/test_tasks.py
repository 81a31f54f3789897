"""Every django-q2 task path names a function a worker can import (mash_runtime/tasks.py)."""

import pytest
from django.utils.module_loading import import_string

from mash_runtime import tasks


@pytest.mark.parametrize("path", tasks.ALL)
def test_each_task_path_imports_to_a_function(path):
    assert callable(import_string(path))


def test_the_sweep_schedule_names_the_registered_path(db):
    from django_q.models import Schedule

    from mash_runtime.sweeper import SWEEP_SCHEDULE, ensure_schedule

    ensure_schedule()
    assert Schedule.objects.get(name=SWEEP_SCHEDULE).func == tasks.SWEEP
