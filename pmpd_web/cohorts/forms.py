from django import forms

from .models import Cohort, StudyVariable


class CohortForm(forms.ModelForm):
    class Meta:
        model = Cohort
        fields = ["name", "description", "role", "centres"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}


class TableUploadForm(forms.Form):
    table = forms.FileField(
        allow_empty_file=True, help_text="CSV (UTF-8) or XLSX in the template's columns"
    )


class StudyVariableForm(forms.Form):
    """The fields of a study variable; the model's ``clean()`` checks them together."""

    name = forms.CharField(
        max_length=40, help_text="The column name in the table, e.g. ecog_performance_status"
    )
    label = forms.CharField(max_length=120)
    kind = forms.ChoiceField(label="Type", choices=StudyVariable.Kind.choices)
    unit = forms.CharField(max_length=24, required=False)
    minimum = forms.FloatField(required=False)
    maximum = forms.FloatField(required=False)
    choices_text = forms.CharField(
        required=False,
        label="Allowed values (a category)",
        help_text="Codes separated by commas, e.g. 0, 1, 2, 3, 4",
    )
    required = forms.BooleanField(required=False)
