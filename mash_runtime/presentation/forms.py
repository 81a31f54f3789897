"""The answer to a pending interaction, as a form (the admin's answer page and the trace page)."""

from __future__ import annotations

from django import forms

from mash_runtime.models import Interaction


class AnswerForm(forms.Form):
    """The answer to one pending interaction, shaped by its type (approval, info, choice)."""

    def __init__(self, interaction: Interaction, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.interaction = interaction
        options = [str(o) for o in (interaction.schema or {}).get("options") or []]
        if interaction.type == Interaction.Type.APPROVAL:
            self.fields["response"] = forms.ChoiceField(choices=[(o, o) for o in options], widget=forms.RadioSelect,
                                                        label="decision")
        elif interaction.type == Interaction.Type.CHOICE:
            self.fields["response"] = forms.MultipleChoiceField(
                choices=[(o, o) for o in options], widget=forms.CheckboxSelectMultiple, required=False, label="choose")
        else:
            self.fields["response"] = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                                      label="answer")

    def answer(self):
        return self.cleaned_data["response"]
