"""Study-defined variables through the page and the API, imported, exported; the import
preview's old -> new values and its commit of what it checked."""

from __future__ import annotations

import io

import openpyxl
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient
from tablemaker import rows, to_csv

from pmpd_web.cohorts.importer import commit_import, upload_table
from pmpd_web.cohorts.models import Patient, StudyVariable, TableImport, table_columns

pytestmark = pytest.mark.django_db


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def define_two(api, cohort):
    url = f"/api/cohorts/{cohort.pk}/variables/"
    ecog = api.post(
        url,
        {"name": "ecog", "label": "ECOG", "kind": "choice", "choices": ["0", "1", "2", "3"]},
        format="json",
    )
    weight = api.post(
        url,
        {
            "name": "weight_loss_pct",
            "label": "Weight loss",
            "kind": "number",
            "unit": "%",
            "minimum": 0,
            "maximum": 60,
        },
        format="json",
    )
    assert ecog.status_code == 201 and weight.status_code == 201, (ecog.json(), weight.json())


def with_study(records):
    for i, record in enumerate(records):
        record["ecog"] = str(i % 3)
        record["weight_loss_pct"] = f"{i % 7 + 0.5}"
    return records


@pytest.mark.slow
def test_define_import_export_and_remove_through_the_api(
    cohort, members, django_capture_on_commit_callbacks
):
    api = api_for(members["coordinator"])
    define_two(api, cohort)
    cohort.refresh_from_db()
    assert cohort.data_version == 2  # defining a variable changes the table
    listed = api_for(members["clinician"]).get(f"/api/cohorts/{cohort.pk}/variables/").json()
    assert [v["name"] for v in listed] == ["ecog", "weight_loss_pct"]

    bad = api.post(
        f"/api/cohorts/{cohort.pk}/variables/",
        {"name": "sex", "label": "Sex again", "kind": "choice", "choices": ["a"]},
        format="json",
    )
    assert bad.status_code == 400
    assert "already a variable of the platform" in str(bad.json()["name"])
    assert "at least two allowed values" in str(bad.json()["choices"])

    columns = [c.name for c in table_columns(cohort)]
    data = to_csv(with_study(rows(6)), columns=columns)
    preview = api.post(
        f"/api/cohorts/{cohort.pk}/imports/", {"file": SimpleUploadedFile("t.csv", data)}
    ).json()
    assert preview["status"] == "previewed", preview["problems"]
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/cohorts/{cohort.pk}/imports/{preview['id']}/commit/")
    patient = api.get(f"/api/cohorts/{cohort.pk}/patients/P-00002/").json()
    assert patient["study_values"] == {"ecog": "1", "weight_loss_pct": 1.5}

    export = api.get(f"/api/cohorts/{cohort.pk}/export/?file_format=csv")
    frame = pd.read_csv(io.BytesIO(export.content), dtype=str, keep_default_na=False)
    assert list(frame.columns[-2:]) == ["ecog", "weight_loss_pct"]
    assert frame.loc[frame["study_id"] == "P-00002", "weight_loss_pct"].item() == "1.5"

    assert api.delete(f"/api/cohorts/{cohort.pk}/variables/ecog/").status_code == 204
    assert not Patient.objects.filter(study_values__has_key="ecog").exists()
    assert Patient.objects.filter(study_values__has_key="weight_loss_pct").count() == 6


def test_unknown_column_message_says_how_to_define_it(cohort, members):
    api = api_for(members["coordinator"])
    data = to_csv(
        with_study(rows(2)),
        columns=[*table_columns(cohort)[0:0], *[c.name for c in table_columns(cohort)], "ecog"],
    )
    preview = api.post(
        f"/api/cohorts/{cohort.pk}/imports/", {"file": SimpleUploadedFile("t.csv", data)}
    ).json()
    assert preview["status"] == "invalid"
    assert "define each as a study variable" in preview["problems"][0]["message"]


def test_the_page_defines_a_variable_and_the_template_has_its_column(client_for, cohort, members):
    client = client_for(members["coordinator"])
    response = client.post(
        reverse("study-variables", args=[cohort.pk]),
        {"name": "ecog", "label": "ECOG", "kind": "choice", "choices_text": "0, 1, 2"},
    )
    assert response.status_code == 302
    assert StudyVariable.objects.get(cohort=cohort).choices == ["0", "1", "2"]
    page = client.get(reverse("study-variables", args=[cohort.pk]))
    assert b"<code>ecog</code>" in page.content and b"0, 1, 2" in page.content
    refused = client.post(
        reverse("study-variables", args=[cohort.pk]),
        {"name": "Bad Name", "label": "x", "kind": "number", "choices_text": "a, b"},
    )
    assert refused.status_code == 200 and b"lower-case letters" in refused.content
    assert b"only a category has allowed values" in refused.content
    template = client.get(reverse("template", args=["xlsx"]) + f"?cohort={cohort.pk}")
    book = openpyxl.load_workbook(io.BytesIO(template.content))
    assert [c.value for c in book["patients"][1]][-1] == "ecog"
    viewer = client_for(members["clinician"])
    assert viewer.get(reverse("study-variables", args=[cohort.pk])).status_code == 200
    outsider = client_for(members["outsider"])
    url = reverse("template", args=["csv"]) + f"?cohort={cohort.pk}"
    assert outsider.get(url).status_code == 404


def test_preview_lists_old_and_new_values_per_patient(client_for, cohort, members):
    """Issue 12 item 5: the preview shows each changed patient's old -> new values."""
    user = members["coordinator"]
    first = upload_table(cohort=cohort, user=user, data=to_csv(rows(4)), filename="a.csv")
    commit_import(first, lambda *a: None)
    changed = rows(4)
    changed[1]["age_at_diagnosis_years"] = "77"
    changed[1]["centre"] = "Lyon"
    changed[3]["vital_status"] = "dead"
    second = upload_table(cohort=cohort, user=user, data=to_csv(changed), filename="b.csv")
    assert second.summary["changes"] == [
        {
            "study_id": "P-00002",
            "values": [["age_at_diagnosis_years", "42", "77"], ["centre", "Madrid", "Lyon"]],
        },
        {"study_id": "P-00004", "values": [["vital_status", "alive", "dead"]]},
    ]
    page = client_for(user).get(reverse("table-import-detail", args=[cohort.pk, second.pk]))
    text = page.content.decode()
    assert 'id="import-changes"' in text
    assert '<td class="old">Madrid</td><td class="new">Lyon</td>' in text


def test_commit_writes_what_the_preview_checked_unless_the_cohort_changed(cohort, members):
    """Issue 14 item 4: one check; a change of the cohort in between makes the commit check
    the file again against the cohort as it is then."""
    user = members["coordinator"]
    first = upload_table(cohort=cohort, user=user, data=to_csv(rows(3)), filename="a.csv")
    assert first.checked and first.checked_against
    assert commit_import(first, lambda *a: None)["checked_at_preview"] is True
    assert TableImport.objects.get(pk=first.pk).checked is None  # not kept once written

    changed = rows(3)
    changed[0]["centre"] = "Lyon"
    second = upload_table(cohort=cohort, user=user, data=to_csv(changed), filename="b.csv")
    edited = Patient.objects.get(study_id="P-00001")
    edited.centre = "Oslo"
    edited.save()  # edited in between (the admin, say)
    summary = commit_import(second, lambda *a: None)
    assert summary["checked_at_preview"] is False
    assert Patient.objects.get(study_id="P-00001").centre == "Lyon"


def test_import_page_status_refreshes_itself_while_importing(client_for, cohort, members):
    """Issue 12 item 5: the header no longer says "Importing" once the import succeeded."""
    user = members["coordinator"]
    table_import = upload_table(cohort=cohort, user=user, data=to_csv(rows(2)), filename="a.csv")
    url = reverse("table-import-detail", args=[cohort.pk, table_import.pk])
    TableImport.objects.filter(pk=table_import.pk).update(status="committing")
    running = client_for(user).get(url).content.decode()
    assert 'hx-select="#import-status"' in running and ">Importing<" in running
    TableImport.objects.filter(pk=table_import.pk).update(status="committed")
    done = client_for(user).get(url).content.decode()
    assert 'id="import-status"' in done and "hx-select" not in done
    assert ">Imported<" in done and "Importing" not in done


def test_reimport_changes_a_study_value_and_keeps_the_others(cohort, members):
    api = api_for(members["coordinator"])
    define_two(api, cohort)
    user = members["coordinator"]
    columns = [c.name for c in table_columns(cohort)]
    first = upload_table(
        cohort=cohort, user=user, data=to_csv(with_study(rows(3)), columns=columns), filename="a"
    )
    commit_import(first, lambda *a: None)
    changed = with_study(rows(3))
    changed[0]["ecog"] = "3"
    without_weight = [c for c in columns if c != "weight_loss_pct"]
    second = upload_table(
        cohort=cohort, user=user, data=to_csv(changed, columns=without_weight), filename="b"
    )
    assert second.summary["changes"] == [{"study_id": "P-00001", "values": [["ecog", "0", "3"]]}]
    assert second.summary["unchanged"] == 2
    commit_import(second, lambda *a: None)
    assert Patient.objects.get(study_id="P-00001").study_values == {
        "ecog": "3",
        "weight_loss_pct": 0.5,
    }
