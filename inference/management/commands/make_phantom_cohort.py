"""Write a synthetic phantom cohort to a folder: each patient's CT (a DICOM series or NIfTI) and
its pancreas/tumour mask (NIfTI), and the clinical table in the import template's columns.

The folder is laid out for the platform's uploads: ``clinical.csv`` for the table import, and
``images/<study ID>/`` per patient for a bulk image upload (the ingest takes a patient's study
ID from the folder name).
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from inference.pmpd.phantom import (
    PhantomConfig,
    iter_cohort,
    write_clinical_table,
    write_dicom_series,
    write_nifti,
)


class Command(BaseCommand):
    help = "Generate a phantom cohort (CTs, masks, clinical CSV) into a folder."

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="folder to write into (created)")
        parser.add_argument("--patients", type=int, default=20)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--size", type=int, default=128, help="in-plane matrix (512 is a real CT's)"
        )
        parser.add_argument("--format", choices=["dicom", "nifti"], default="nifti")

    def handle(self, *args, out: str, patients: int, seed: int, size: int, format: str, **options):
        if patients < 1:
            raise CommandError("--patients must be at least 1")
        try:
            config = PhantomConfig(size=size)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        folder = Path(out)
        images = folder / "images"
        rows = []
        for patient in tqdm(
            iter_cohort(patients, seed=seed, config=config),
            total=patients,
            desc="Writing phantom patients",
            unit="patient",
        ):
            target = images / patient.study_id
            if format == "dicom":
                write_dicom_series(patient, target / "ct")
                # The mask as NIfTI beside the series (the phantom has no DICOM SEG writer).
                write_nifti(patient, target)
                (target / "ct.nii.gz").unlink()
            else:
                write_nifti(patient, target)
            rows.append(patient.clinical)
        table = write_clinical_table(rows, folder / "clinical.csv")
        self.stdout.write(
            f"Wrote {patients} synthetic patients ({format}, {size}x{size} in-plane, seed {seed}) "
            f"to {images} and the clinical table to {table}."
        )
