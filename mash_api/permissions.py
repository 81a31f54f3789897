from rest_framework.permissions import BasePermission

from mash_api.auth import authenticate_headers
from mash_api.errors import Unauthorized


class HasApiKey(BasePermission):
    """Every /api/v1 route: a valid key, a logged-in staff user, or no keys configured at all."""

    def has_permission(self, request, view) -> bool:
        principal = authenticate_headers(request.headers, getattr(request._request, "user", None))
        if principal is None:
            raise Unauthorized()
        request.mash_principal = principal
        return True
