"""Admin for API keys: issue (the key is shown once), rename, revoke.

The secret's hash is never displayed, and the full key exists only in the message
shown to the operator right after the add form is saved.
"""

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html

from mash_api import auth
from mash_api.models import ApiKey


class ApiKeyAddForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name"]
        help_texts = {"name": "Who or what will use the key, e.g. 'ci' or 'alice-laptop'. "
                              "The key itself is shown once, after saving."}


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request, model_admin):
        return (("no", "Active"), ("yes", "Revoked"))

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "created_at", "last_used_at", "is_revoked")
    list_filter = (RevokedFilter,)
    search_fields = ("name", "=prefix")
    actions = ["revoke_selected"]
    # hashed_secret is deliberately absent from every field list.
    fields = ("name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")

    @admin.display(boolean=True, description="revoked", ordering="revoked_at")
    def is_revoked(self, obj: ApiKey) -> bool:
        return obj.revoked

    def get_fields(self, request, obj=None):
        return ("name",) if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name"])
            return
        row, key = ApiKey.issue(form.cleaned_data["name"])
        # The admin goes on with `obj` (history entry, redirect): make it the issued row.
        obj.__dict__.update(row.__dict__)
        auth.forget_cached_configuration()
        # Messages travel in the operator's cookie to the next page and are gone once shown.
        messages.warning(request, format_html(
            "New API key for “{}”: <code>{}</code> — copy it now: it is stored only as a hash and "
            "will not be shown again.", row.name, key))

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        auth.forget_cached_configuration()
        self.message_user(request, f"Revoked {count} key{'s' if count != 1 else ''}.", messages.SUCCESS)
