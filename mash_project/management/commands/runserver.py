"""`manage.py runserver` served by daphne, so SSE and WebSockets work as under `mash host serve`.

daphne's own command comes with its app, and that app imports Twisted at setup in every
process (about 25 MiB each, six times over in a worker cluster that never serves HTTP).
Here it is imported only when runserver runs; `mash_project` is first in INSTALLED_APPS so
this command wins over staticfiles' one.
"""

from daphne.management.commands.runserver import Command as DaphneRunserver


class Command(DaphneRunserver):
    pass
