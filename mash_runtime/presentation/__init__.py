"""How runtime records are shown: the one clock, duration and JSON text, the big-table
paginator and the interaction answer form.

The runtime admin (`mash_runtime.admin`) and the telemetry pages (`mash_telemetry`) both
show runtime records; these pieces sit here, below both, so the admin needs nothing of
mash_telemetry. `formats` imports no Django (the CLI uses it too).
"""
