from rest_framework.response import Response
from rest_framework.views import APIView

from mash_api.connections import release_connection
from mash_api.errors import unstorable_param_error
from mash_api.permissions import HasApiKey


def ok(data, status: int = 200) -> Response:
    return Response({"data": data}, status=status)


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
