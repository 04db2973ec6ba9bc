"""Allowed values of the clinical variables, in the words of the clinic and the import template.

Pure Python (no Django), so the import template, the model choices and the synthetic phantom
cohort all read the same lists.
"""

SEX = ("female", "male")
TUMOUR_LOCATION = ("head", "body", "tail", "other")
NCCN_RESECTABILITY = ("resectable", "borderline_resectable", "locally_advanced", "metastatic")
YES_NO_UNKNOWN = ("yes", "no", "unknown")
YES_NO = ("yes", "no")
METASTASIS_SITES = ("liver", "lung", "peritoneum", "other", "unknown")
METASTASIS_DETECTION = ("imaging", "laparoscopy", "surgery", "other")
VITAL_STATUS = ("alive", "dead")
COHORT_ROLE = ("development", "internal_test", "external_validation")

AGE_RANGE_YEARS = (18, 110)
TUMOUR_SIZE_RANGE_MM = (1, 300)
CA19_9_RANGE_U_PER_ML = (0, 1_000_000)
SURVIVAL_DAYS_MAX = 36_500
#: Names the analytics derive from the table (a study variable may not take them).
DERIVED_NAMES = (
    "age_group",
    "tumour_size_group",
    "ca19_9_group",
    "mrs_group",
    "risk_group",
    "metastasis_risk_score",
    "mrs_per_0_1",
    "cohort",
    "death",
    "metastasis_label",
    "patient_id",
)
STUDY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def label(value: str) -> str:
    """How a coded value reads on screen: 'borderline_resectable' -> 'Borderline resectable'."""
    return value.replace("_", " ").capitalize()
