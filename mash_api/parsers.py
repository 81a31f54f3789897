"""The request-body parser of /api/v1: DRF's JSON parser, with the failures a client can
cause answered as 400 INVALID_JSON instead of crashing the view."""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:  # json's C parser gives up around 1,000 levels: say so
            raise ParseError("JSON nested too deeply") from None
