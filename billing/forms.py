"""The usage page's choices: which workspace, and which billing days (7 / 30 / 90 days or a range)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms

from billing.selectors import UsageRange

PRESETS = (7, 30, 90)
MAX_RANGE_DAYS = 366


class UsageFilterForm(forms.Form):
    workspace = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    days = forms.TypedChoiceField(
        choices=[(n, f"{n} days") for n in PRESETS], coerce=int, required=False, empty_value=None
    )
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From")
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To")

    def __init__(self, *args: Any, today: dt.date, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.today = today

    def clean(self) -> dict:
        data = super().clean() or {}  # Form.clean returns cleaned_data; the stubs allow None
        start, end = data.get("start"), data.get("end")
        if start is None and end is None:
            return data
        if start is None or end is None:
            raise forms.ValidationError("Give both the first and the last day of the range.")
        if start > end:
            raise forms.ValidationError("The first day must not be after the last one.")
        if end > self.today:
            raise forms.ValidationError(f"The last day can be today ({self.today:%Y-%m-%d}) at the latest.")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_RANGE_DAYS} days.")
        return data

    def usage_range(self) -> UsageRange:
        """The chosen days; the last 30 days when nothing (valid) was chosen."""
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("start") and data.get("end"):
            return UsageRange(data["start"], data["end"], None)
        return UsageRange.last_days(data.get("days") or 30, today=self.today)

    def workspace_id(self) -> int | None:
        return self.cleaned_data.get("workspace") if self.is_valid() else None
