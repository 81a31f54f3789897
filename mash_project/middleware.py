"""Django's stock middleware, run on the event loop instead of in a thread.

Under ASGI, Django calls each `MiddlewareMixin` hook through `sync_to_async`: two thread
hops per middleware per request, fourteen for the stack in settings. Measured under
daphne that was about 3.4 ms of CPU on every request, more than the API view itself
(bench/README.md). These hooks do no I/O (the session and the user are loaded lazily,
by whoever reads them), so here they run inline. The exceptions are the hooks that may
do I/O: the session save (a modified session, or SESSION_SAVE_EVERY_REQUEST), messages
that have something to store, CSRF kept in the session, and the CSRF check of an unsafe
request (it may parse a form body and render a failure page); those still take the hop.

Each class subclasses its Django original, so Django's checks, `isinstance` tests and
settings all see the stock middleware. Sync mode (WSGI, the test client) is unchanged.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security


class InlineHooks:
    """`__acall__` that runs `process_request` and `process_response` without a thread hop."""

    def request_needs_thread(self, request) -> bool:
        return False

    def response_needs_thread(self, request, response) -> bool:
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            if self.request_needs_thread(request):
                response = await sync_to_async(self.process_request, thread_sensitive=True)(request)
            else:
                response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request, response):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooks, security.SecurityMiddleware):
    pass


class SessionMiddleware(InlineHooks, sessions.SessionMiddleware):
    def response_needs_thread(self, request, response) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(InlineHooks, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooks, csrf.CsrfViewMiddleware):
    def request_needs_thread(self, request) -> bool:
        return settings.CSRF_USE_SESSIONS

    def response_needs_thread(self, request, response) -> bool:
        return settings.CSRF_USE_SESSIONS

    async def aprocess_view(self, request, callback, callback_args, callback_kwargs):
        # An unsafe method gets its token checked against the form body (which may be parsed
        # from a temporary file) and a failure page rendered: I/O, so it takes the hop. An
        # exempt view (the API's: DRF does its own check, for session auth only) skips it all.
        needs_check = not getattr(callback, "csrf_exempt", False) and not getattr(request, "csrf_processing_done", False)
        if needs_check and (settings.CSRF_USE_SESSIONS or request.method not in ("GET", "HEAD", "OPTIONS", "TRACE")):
            return await sync_to_async(super().process_view, thread_sensitive=True)(
                request, callback, callback_args, callback_kwargs)
        return super().process_view(request, callback, callback_args, callback_kwargs)

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode:
            # Django registers `process_view` as found on the instance: give it the inline one.
            self.process_view = self.aprocess_view


class AuthenticationMiddleware(InlineHooks, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(InlineHooks, messages.MessageMiddleware):
    def response_needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        # Storing may read or write the session; with nothing read or added it is a no-op.
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooks, clickjacking.XFrameOptionsMiddleware):
    pass
