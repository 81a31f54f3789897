"""Forms of the telemetry pages: filters (GET). The interaction answer form (POST) is the admin's
too: `mash_runtime.presentation.forms.AnswerForm`."""

from __future__ import annotations

from django import forms

from mash_runtime.models import Request

RANGES = {"1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}


def label_times_by_zone(form: forms.Form) -> None:
    """`since` / `until` are read in the server's time zone (the pages' one clock): say so."""
    from django.utils import timezone

    from mash_runtime.presentation.clock import zone_label

    zone = zone_label(timezone.localtime())
    for name in ("since", "until"):
        if name in form.fields:
            form.fields[name].label = f"{name} ({zone})"


class RequestFilterForm(forms.Form):
    agent = forms.ChoiceField(required=False, label="agent")
    status = forms.ChoiceField(required=False, label="status", choices=[("", "any status"), *Request.Status.choices])
    session = forms.CharField(required=False, max_length=200, label="session id")
    range = forms.ChoiceField(required=False, label="created",
                              choices=[("", "any time"), *((k, f"last {k}") for k in RANGES)])
    since = forms.DateTimeField(required=False, label="since", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, label="until", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    q = forms.CharField(required=False, max_length=200, label="search",
                        widget=forms.TextInput(attrs={"placeholder": "message text, request or trace id"}))
    top = forms.BooleanField(required=False, label="top-level only")

    def __init__(self, *args, agents: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].choices = [("", "any agent"), *((a, a) for a in agents)]
        label_times_by_zone(self)


class SessionFilterForm(forms.Form):
    agent = forms.ChoiceField(required=False, label="agent")
    q = forms.CharField(required=False, max_length=200, label="session id contains")

    def __init__(self, *args, agents: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].choices = [("", "any agent"), *((a, a) for a in agents)]


class MemorySearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=500, label="search",
                        widget=forms.TextInput(attrs={"placeholder": "words from past turns", "autofocus": True}))
    who = forms.ChoiceField(choices=[("user", "user messages"), ("agent", "agent answers")], initial="user",
                            required=False, label="in")
    agent = forms.ChoiceField(required=False, label="agent")
    session = forms.CharField(required=False, max_length=200, label="session id")

    def __init__(self, *args, agents: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].choices = [("", "any agent"), *((a, a) for a in agents)]


class ApiLogFilterForm(forms.Form):
    method = forms.ChoiceField(required=False, label="method", choices=[("", "any method"), *(
        (m, m) for m in ("GET", "POST", "PUT", "PATCH", "DELETE"))])
    status = forms.CharField(required=False, max_length=3, label="status",
                             widget=forms.TextInput(attrs={"placeholder": "e.g. 404 or 5xx", "size": 12}))
    path = forms.CharField(required=False, max_length=500, label="path contains")
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)


class RunFilterForm(forms.Form):
    """The workflow runs list: by workflow, status and creation time (a range or since/until)."""

    workflow = forms.ChoiceField(required=False, label="workflow")
    status = forms.ChoiceField(required=False, label="status")
    range = RequestFilterForm.base_fields["range"]
    since = RequestFilterForm.base_fields["since"]
    until = RequestFilterForm.base_fields["until"]
    q = forms.CharField(required=False, max_length=200, label="run id or dedup key")

    def __init__(self, *args, workflows: list[str] = (), **kwargs):
        from mash_runtime.models import WorkflowRun

        super().__init__(*args, **kwargs)
        self.fields["workflow"].choices = [("", "any workflow"), *((w, w) for w in workflows)]
        self.fields["status"].choices = [("", "any status"), *WorkflowRun.Status.choices]
        label_times_by_zone(self)
