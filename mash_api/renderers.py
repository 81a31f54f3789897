"""The response renderer of /api/v1: DRF's JSON renderer (UTF-8, not ASCII-escaped), which
still answers when a stored row holds a lone surrogate (SQLite keeps one escaped; UTF-8
cannot encode it): that response is rendered from the repaired value instead of a 500."""

from rest_framework import renderers

from mash_runtime.storable import repaired


class JSONRenderer(renderers.JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            return super().render(repaired(data), accepted_media_type, renderer_context)
