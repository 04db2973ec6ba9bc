from django import forms

from .models import Cohort


class CohortForm(forms.ModelForm):
    class Meta:
        model = Cohort
        fields = ["name", "description", "role", "centres"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}


class TableUploadForm(forms.Form):
    table = forms.FileField(
        allow_empty_file=True, help_text="CSV (UTF-8) or XLSX in the template's columns"
    )
