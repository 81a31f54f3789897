from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from mash_api.auth import authenticate_headers, permission_refusal
from mash_api.errors import Unauthorized


class HasApiKey(BasePermission):
    """Every /api/v1 route: a valid key, a logged-in staff user, or no keys configured at all.

    A staff session's writes also need the model permission the view names in
    `write_permissions` (method -> "app.codename"). DRF's SessionAuthentication has
    already run Django's CSRF check for a cookie-authenticated unsafe request.
    """

    def has_permission(self, request, view) -> bool:
        user = getattr(request._request, "user", None)
        principal = authenticate_headers(request.headers, user)
        if principal is None:
            raise Unauthorized()
        permission = getattr(view, "write_permissions", {}).get(request.method)
        if (reason := permission_refusal(principal, user, request.method, permission)) is not None:
            raise PermissionDenied(reason)
        request.mash_principal = principal
        return True
