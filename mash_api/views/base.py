from rest_framework.response import Response
from rest_framework.views import APIView

from mash_api.connections import release_connection
from mash_api.errors import invalid_input, unstorable_param_error
from mash_api.permissions import HasApiKey


def ok(data, status: int = 200) -> Response:
    return Response({"data": data}, status=status)


def validated_query(serializer_class, query) -> dict:
    """Query parameters checked by a serializer (plain Django views too: the SSE ones), or the
    API's 422 (400 for blank ones) with each parameter at fault under `loc: ["query", name]`."""
    serializer = serializer_class(data=query)
    if not serializer.is_valid():
        raise invalid_input(serializer.errors, ("query",))
    return serializer.validated_data


class ApiView(APIView):
    """Base of every /api/v1 view: key check, envelope errors (settings), thin bodies."""

    permission_classes = [HasApiKey]

    def dispatch(self, request, *args, **kwargs):
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            release_connection()  # the response needs no database: rendering and logging it need not hold one

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # the key check first: 401 before anything else
        if (error := unstorable_param_error(kwargs, request.query_params)) is not None:
            raise error

    def body(self, serializer_class):
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def query(self, serializer_class):
        return validated_query(serializer_class, self.request.query_params)
