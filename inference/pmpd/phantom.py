"""Synthetic portal-venous abdominal CT cohorts for PMPD, with known truth.

Why: the platform must be built, demonstrated and tested without patient data. The phantom
gives every piece (ingest, pre-processing, training, scoring, survival statistics) data with the
shape of the paper's: CT volumes in HU with realistic anatomy and scanner variety, pancreas and
tumour masks, and a clinical table in the import template, all deterministic from a seed.

The imaging signal (documented so results can be judged against it). Each patient has a latent
"metastasis signal" z ~ Normal(separation * metastatic, 1), so the two groups overlap and the
best possible patient-level AUROC is Phi(separation / sqrt(2)) (0.95 at the default 2.3). Its
strength s = Phi(z - separation / 2), in (0, 1), grades three features at the tumour, all made
at millimetre scales that survive the 2 mm resampling and the crop to the pancreas:

* margin: spicules (narrow radial extensions of tumour-like tissue into the fat) whose length
  grows with s, on top of a benign lobulation every tumour has;
* texture: smooth heterogeneity inside the tumour (standard deviation 5 + 30 s HU) and
  hypodense necrotic foci in a share (0.25 s) of its volume;
* peritumoural stranding: fat within ~10 mm of the tumour raised by up to 110 s HU along
  radial strands, plus a haze of up to 30 s HU.

The same latent raises the hazard of death (with CA19-9 and metastasis), the probability and
speed of later metastasis in patients without it at diagnosis, and, mildly, the tumour size: so
the MRS of a model that learns the signal has real survival and time-to-metastasis effects.
Metastasis sites are not drawn in the pancreas crop (only liver lesions, visible in the liver).

Geometry: arrays are (z, y, x), LPS, identity direction; spacing/origin in (x, y, z) mm. The
pixel spacing is drawn as at a 512 matrix (field of view 307-461 mm, i.e. 0.6-0.9 mm pixels);
with a smaller ``size`` the same field of view is sampled by fewer, larger pixels. Every
coordinate is a multiple of 1/2048 mm, exactly representable in NIfTI's float32 and DICOM's
decimal strings, so round trips are exact.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

CLINICAL_COLUMNS: tuple[str, ...] = (
    "study_id",
    "age_at_diagnosis_years",
    "sex",
    "centre",
    "tumour_location",
    "tumour_size_mm",
    "ct_manufacturer",
    "ca19_9_u_per_ml",
    "nccn_resectability",
    "metastasis_at_diagnosis",
    "metastasis_sites",
    "metastasis_detection",
    "overall_survival_days",
    "vital_status",
    "developed_metastasis",
    "days_to_metastasis",
)

MANUFACTURERS: tuple[str, ...] = ("GE MEDICAL SYSTEMS", "SIEMENS", "Philips", "TOSHIBA")
SITES: tuple[str, ...] = ("liver", "lung", "peritoneum", "other")


@dataclass(frozen=True)
class PhantomConfig:
    """The cohort's distributions; defaults follow the paper's cohorts (PMPD_METHOD.md, "Data").

    Attributes:
        size: in-plane matrix (512 for realistic volumes, 64-128 for tests).
        z_extent_mm: craniocaudal coverage; the slice count is this over the slice thickness.
        prevalence: share with metastasis at diagnosis (paper: 31.5%).
        signal_separation: separation (in standard deviations) of the latent metastasis signal
            between the groups; sets the best achievable AUROC, Phi(separation / sqrt(2)).
        unknown_metastasis_fraction: share whose metastasis status is "unknown".
        site_liver, site_lung, site_peritoneum, site_other: probability of each site for a
            metastatic patient (several allowed); ``site_unknown`` is the share whose sites
            are unknown (paper: 85.6%, 8.2%, 10.1%, unknown 1.9%).
        location_weights: head, body, tail, other (paper: head 58.6%).
        female_fraction, age_median_years, age_sd_years: demographics (42% women, median 66).
        tumour_size_median_mm: median largest diameter at zero signal; it grows by up to 28%
            with the signal strength (log-normal, clipped to 10-60 mm).
        ca19_9_median_non_metastatic, ca19_9_median_metastatic, ca19_9_log_sd: log-normal.
        ca19_9_non_secretor_fraction: Lewis-negative patients with CA19-9 under 5 U/mL.
        ca19_9_missing_fraction: blank CA19-9 in the table.
        detection_weights: imaging, laparoscopy, surgery, other for metastatic patients.
        os_median_days: median survival of a non-metastatic patient with zero signal and
            CA19-9 of 37 U/mL; Weibull with ``os_weibull_shape``.
        hazard_signal, hazard_log10_ca19_9, hazard_metastasis: log hazard ratios per unit of
            signal strength, per log10(CA19-9/37) and for metastasis at diagnosis.
        follow_up_days: administrative censoring, uniform in this range.
        later_metastasis_median_days, later_metastasis_signal: time to a later metastasis in
            non-metastatic patients: Weibull (shape 1.1) whose log hazard rises by
            ``later_metastasis_signal`` per unit of signal strength; observed when before
            death and censoring.
        slice_thicknesses_mm, slice_thickness_weights: scanner reconstructions.
        centres: centre names; each has its own mix of manufacturers.
    """

    size: int = 512
    z_extent_mm: float = 200.0
    prevalence: float = 0.315
    signal_separation: float = 2.3
    unknown_metastasis_fraction: float = 0.015
    site_liver: float = 0.856
    site_lung: float = 0.082
    site_peritoneum: float = 0.101
    site_other: float = 0.03
    site_unknown: float = 0.019
    location_weights: tuple[float, float, float, float] = (0.586, 0.2, 0.16, 0.054)
    female_fraction: float = 0.42
    age_median_years: float = 66.0
    age_sd_years: float = 9.0
    tumour_size_median_mm: float = 28.0
    ca19_9_median_non_metastatic: float = 110.0
    ca19_9_median_metastatic: float = 650.0
    ca19_9_log_sd: float = 1.3
    ca19_9_non_secretor_fraction: float = 0.08
    ca19_9_missing_fraction: float = 0.04
    detection_weights: tuple[float, float, float, float] = (0.80, 0.10, 0.08, 0.02)
    os_median_days: float = 620.0
    os_weibull_shape: float = 1.3
    hazard_signal: float = 1.2
    hazard_log10_ca19_9: float = 0.35
    hazard_metastasis: float = 0.6
    follow_up_days: tuple[float, float] = (180.0, 2200.0)
    later_metastasis_median_days: float = 420.0
    later_metastasis_signal: float = 1.8
    slice_thicknesses_mm: tuple[float, ...] = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
    slice_thickness_weights: tuple[float, ...] = (0.10, 0.15, 0.20, 0.10, 0.10, 0.10, 0.25)
    centres: tuple[str, ...] = (
        "ES-Madrid",
        "ES-Barcelona",
        "CN-Zhengzhou",
        "NL-Nijmegen",
        "NL-Amsterdam",
    )

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError("size must be at least 32")
        if len(self.slice_thicknesses_mm) != len(self.slice_thickness_weights):
            raise ValueError("one weight per slice thickness")


@dataclass
class PhantomPatient:
    """One synthetic patient: volume, mask, geometry, clinical table row and hidden truth.

    Attributes:
        ct: int16 HU volume (z, y, x).
        mask: uint8 (z, y, x): 0 background, 1 pancreas, 2 tumour.
        spacing, origin: (x, y, z) mm; direction: row-major 3x3 (identity, LPS).
        clinical: the import-template row (``CLINICAL_COLUMNS``), values as they go in the CSV
            (None for blank).
        metastatic: the truth behind ``metastasis_at_diagnosis`` (also for "unknown").
        site_labels: none, liver, lung, peritoneum as 0/1, NaN where unknown (site "unknown").
        signal_strength: the latent imaging signal s in (0, 1).
        identifiers: fake direct identifiers (name, MRN, birth date, institution...) written
            into DICOM headers so de-identification can be tested.
    """

    study_id: str
    ct: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    clinical: dict[str, Any]
    metastatic: bool
    site_labels: np.ndarray
    signal_strength: float
    identifiers: dict[str, str]
    seed: int
    index: int
    slice_thickness_mm: float = field(init=False)

    def __post_init__(self) -> None:
        self.slice_thickness_mm = self.spacing[2]


# ----------------------------------------------------------------------------------------------
# Clinical variables


@dataclass
class _Case:
    """Everything drawn before the image: the clinical row, the latent signal, the scanner."""

    study_id: str
    metastatic: bool
    strength: float
    sites: list[str]
    clinical: dict[str, Any]
    nominal_pixel_mm: float
    slice_thickness_mm: float
    identifiers: dict[str, str]


_FIRST_NAMES = ("ANA", "JORDI", "LI", "WEI", "MAARTEN", "SANNE", "CARMEN", "PIET", "MEI", "LUIS")
_LAST_NAMES = ("GARCIA", "JANSEN", "ZHANG", "PUIG", "DE VRIES", "WANG", "LOPEZ", "BAKKER")


def _choice(rng: np.random.Generator, options: tuple[Any, ...], weights: Iterable[float]) -> Any:
    p = np.asarray(list(weights), dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _weibull_time(
    rng: np.random.Generator, *, median_days: float, shape: float, log_hazard: float
) -> float:
    """Weibull time with the given median at log hazard 0 (proportional hazards)."""
    scale = median_days / math.log(2.0) ** (1.0 / shape)
    return scale * (rng.exponential() / math.exp(log_hazard)) ** (1.0 / shape)


def _draw_case(index: int, rng: np.random.Generator, config: PhantomConfig) -> _Case:
    study_id = f"PHX-{index + 1:04d}"
    metastatic = bool(rng.random() < config.prevalence)
    latent = rng.normal() + config.signal_separation * metastatic
    strength = float(ndtr(latent - config.signal_separation / 2.0))
    status_unknown = bool(rng.random() < config.unknown_metastasis_fraction)

    female = bool(rng.random() < config.female_fraction)
    age = int(np.clip(round(rng.normal(config.age_median_years, config.age_sd_years)), 30, 92))
    centre_index = int(rng.integers(len(config.centres)))
    manufacturer_weights = np.roll([0.4, 0.3, 0.2, 0.1], centre_index)
    manufacturer = _choice(rng, MANUFACTURERS, manufacturer_weights)
    location = _choice(rng, ("head", "body", "tail", "other"), config.location_weights)
    size_mm = config.tumour_size_median_mm * math.exp(rng.normal(0.0, 0.3) + 0.25 * strength)
    size_mm = float(np.clip(size_mm, 10.0, 60.0))

    median_ca = (
        config.ca19_9_median_metastatic if metastatic else config.ca19_9_median_non_metastatic
    )
    if rng.random() < config.ca19_9_non_secretor_fraction:
        ca19_9 = float(rng.uniform(0.5, 5.0))
    else:
        ca19_9 = float(np.clip(median_ca * math.exp(rng.normal(0.0, config.ca19_9_log_sd)), 1, 5e4))
    ca_missing = bool(rng.random() < config.ca19_9_missing_fraction)

    sites: list[str] = []
    detection = None
    if metastatic:
        if rng.random() < config.site_unknown:
            sites = ["unknown"]
        else:
            probabilities = (
                config.site_liver,
                config.site_lung,
                config.site_peritoneum,
                config.site_other,
            )
            sites = [s for s, p in zip(SITES, probabilities, strict=True) if rng.random() < p]
            if not sites:
                sites = [_choice(rng, SITES, probabilities)]
        detection = _choice(
            rng, ("imaging", "laparoscopy", "surgery", "other"), config.detection_weights
        )
        if detection == "imaging":
            nccn = "metastatic"
        elif detection in ("laparoscopy", "surgery"):
            # Found only when surgery was attempted: staged resectable or borderline before.
            nccn = _choice(rng, ("resectable", "borderline_resectable"), (0.7, 0.3))
        else:
            nccn = _choice(rng, ("locally_advanced", "metastatic"), (0.5, 0.5))
    else:
        nccn = _choice(
            rng, ("resectable", "borderline_resectable", "locally_advanced"), (0.45, 0.25, 0.30)
        )

    log_hazard = (
        config.hazard_signal * strength
        + config.hazard_log10_ca19_9 * math.log10(max(ca19_9, 1.0) / 37.0)
        + config.hazard_metastasis * metastatic
        + 0.3 * (nccn == "locally_advanced")
    )
    death = _weibull_time(
        rng, median_days=config.os_median_days, shape=config.os_weibull_shape, log_hazard=log_hazard
    )
    censor = float(rng.uniform(*config.follow_up_days))
    os_days = max(1, round(min(death, censor)))
    vital = "dead" if death <= censor else "alive"
    later = _weibull_time(
        rng,
        median_days=config.later_metastasis_median_days,
        shape=1.1,
        log_hazard=config.later_metastasis_signal * (strength - 0.5),
    )

    developed = None
    days_to_metastasis = None
    if not metastatic and not status_unknown:
        if rng.random() < 0.03:
            developed = None  # follow-up for metastasis not recorded
        elif later < min(death, censor):
            developed = "yes"
            days_to_metastasis = max(1, min(round(later), os_days))
        else:
            developed = "no"

    if status_unknown:
        status, sites_text, detection, nccn_text = "unknown", None, None, nccn
        if nccn_text == "metastatic":
            nccn_text = "locally_advanced"
    else:
        status = "yes" if metastatic else "no"
        sites_text = ";".join(sites) if metastatic else None
        nccn_text = nccn

    study_date = dt.date(2012, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    birth = study_date - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    identifiers = {
        "patient_name": f"{_choice(rng, _LAST_NAMES, [1] * 8)}^{_choice(rng, _FIRST_NAMES, [1] * 10)}",
        "patient_id": f"MRN{int(rng.integers(10**7, 10**8))}",
        "birth_date": birth.strftime("%Y%m%d"),
        "study_date": study_date.strftime("%Y%m%d"),
        "accession_number": f"ACC{int(rng.integers(10**6, 10**7))}",
        "institution_name": f"Hospital {config.centres[centre_index]}",
        "referring_physician": f"DR^{_choice(rng, _LAST_NAMES, [1] * 8)}",
    }
    clinical = {
        "study_id": study_id,
        "age_at_diagnosis_years": age,
        "sex": "female" if female else "male",
        "centre": config.centres[centre_index],
        "tumour_location": location,
        "tumour_size_mm": round(size_mm, 1),
        "ct_manufacturer": manufacturer,
        "ca19_9_u_per_ml": None if ca_missing else round(ca19_9, 1),
        "nccn_resectability": nccn_text,
        "metastasis_at_diagnosis": status,
        "metastasis_sites": sites_text,
        "metastasis_detection": detection if status == "yes" else None,
        "overall_survival_days": os_days,
        "vital_status": vital,
        "developed_metastasis": developed,
        "days_to_metastasis": days_to_metastasis,
    }
    return _Case(
        study_id=study_id,
        metastatic=metastatic,
        strength=strength,
        sites=sites,
        clinical=clinical,
        nominal_pixel_mm=float(rng.uniform(0.6, 0.9)),
        slice_thickness_mm=float(
            _choice(rng, config.slice_thicknesses_mm, config.slice_thickness_weights)
        ),
        identifiers=identifiers,
    )


def _site_labels(case: _Case) -> np.ndarray:
    """none, liver, lung, peritoneum; NaN for the organ sites when they are unknown."""
    if not case.metastatic:
        return np.array([1.0, 0.0, 0.0, 0.0])
    if case.sites == ["unknown"]:
        return np.array([0.0, np.nan, np.nan, np.nan])
    return np.array([0.0] + [float(s in case.sites) for s in ("liver", "lung", "peritoneum")])


# ----------------------------------------------------------------------------------------------
# Image


@dataclass
class _Grid:
    """World coordinates (mm) of the voxel centres; z is measured from the lowest slice."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    pixel_mm: float
    thickness_mm: float

    def box(
        self, low: tuple[float, float, float], high: tuple[float, float, float]
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """Index slices and broadcastable coordinates (z, y, x) of a world box (x, y, z order)."""
        ranges = []
        for axis, lo, hi in (
            (self.z, low[2], high[2]),
            (self.y, low[1], high[1]),
            (self.x, low[0], high[0]),
        ):
            start, stop = np.searchsorted(axis, lo), np.searchsorted(axis, hi, side="right")
            if stop <= start:
                return None
            ranges.append(slice(int(start), int(stop)))
        zs, ys, xs = ranges
        return (
            (zs, ys, xs),
            self.z[zs].astype(np.float32)[:, None, None],
            self.y[ys].astype(np.float32)[None, :, None],
            self.x[xs].astype(np.float32)[None, None, :],
        )


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float
) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def _paint_ellipsoid(
    volume: np.ndarray,
    grid: _Grid,
    center: tuple[float, float, float],
    semi: tuple[float, float, float],
    value: float,
    inside: np.ndarray | None = None,
) -> None:
    """Set an axis-aligned ellipsoid (x, y, z mm) to ``value``; ``inside`` (2D) restricts it."""
    (cx, cy, cz), (sx, sy, sz) = center, semi
    found = grid.box((cx - sx, cy - sy, cz - sz), (cx + sx, cy + sy, cz + sz))
    if found is None:
        return
    (zs, ys, xs), z, y, x = found
    shape = (
        ((x - center[0]) / semi[0]) ** 2
        + ((y - center[1]) / semi[1]) ** 2
        + ((z - center[2]) / semi[2]) ** 2
    ) <= 1.0
    if inside is not None:
        shape &= inside[None, ys, xs]
    volume[zs, ys, xs][shape] = value


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels: tuple[float, ...]
) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (float32)."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_voxels)
    return field_ / max(float(field_.std()), 1e-6)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, 3))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _spikes(cosines: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Sum over directions of amplitude * max(cos, 0)^32: narrow (about 12 degrees) lobes."""
    c = np.maximum(cosines, 0.0)
    for _ in range(5):  # c ** 32 by repeated squaring: far cheaper than np.power
        c = c * c
    return c @ amplitudes


def _render(case: _Case, config: PhantomConfig, rng: np.random.Generator) -> dict[str, Any]:
    size = config.size
    fov = 512.0 * case.nominal_pixel_mm
    pixel = round(fov / size * 1024.0) / 1024.0
    thickness = case.slice_thickness_mm
    n_slices = max(int(round(config.z_extent_mm / thickness)), 8)
    offsets = (np.arange(size) - (size - 1) / 2.0) * pixel
    grid = _Grid(
        x=offsets,
        y=offsets,
        z=np.arange(n_slices) * thickness,
        pixel_mm=pixel,
        thickness_mm=thickness,
    )
    extent = n_slices * thickness
    x2 = offsets.astype(np.float32)[None, :]
    y2 = offsets.astype(np.float32)[:, None]

    # Body wall, fat, muscle: one cross-section for every slice.
    half_fov = pixel * size / 2.0
    ax = min(rng.uniform(125.0, 165.0), 0.46 * 2 * half_fov)
    ay = ax * rng.uniform(0.68, 0.80)
    cy = rng.uniform(-10.0, 10.0)
    fat = rng.uniform(8.0, 28.0) * ay / 110.0
    wall = rng.uniform(8.0, 13.0)
    template = np.full((size, size), -1000.0, dtype=np.float32)
    template[_ellipse(x2, y2, 0, cy, ax, ay)] = 30.0
    template[_ellipse(x2, y2, 0, cy, ax - 2, ay - 2)] = -100.0 + rng.uniform(-8, 8)
    template[_ellipse(x2, y2, 0, cy, ax - 2 - fat, ay - 2 - fat)] = 50.0
    axi, ayi = ax - 2 - fat - wall, ay - 2 - fat - wall
    inner = _ellipse(x2, y2, 0, cy, axi, ayi)
    template[inner] = -92.0 + rng.uniform(-6, 6)

    spine_y = cy + ayi - 30.0
    template[_ellipse(x2, y2, 0, spine_y + 38, 42, 22) & ~inner] = 52.0  # paraspinal muscles
    for side in (-1, 1):
        template[_ellipse(x2, y2, side * 32, spine_y - 6, 13, 12)] = 50.0  # psoas
    template[_ellipse(x2, y2, 0, spine_y, 19, 17)] = 650.0
    template[_ellipse(x2, y2, 0, spine_y, 16.5, 14.5)] = 230.0
    template[_ellipse(x2, y2, 0, spine_y + 27, 11, 9)] = 500.0
    template[_ellipse(x2, y2, 0, spine_y + 27, 7, 6)] = 25.0

    aorta_r = rng.uniform(9.0, 12.0)
    aorta = (8.0, spine_y - 17.0 - aorta_r)
    arterial_hu = rng.uniform(150.0, 200.0)
    portal_hu = rng.uniform(150.0, 190.0)
    vessels = np.zeros((size, size), dtype=bool)
    for cx_, cy_, rx, ry_, hu in (
        (aorta[0], aorta[1], aorta_r, aorta_r, arterial_hu),
        (-24.0, spine_y - 20.0, 13.0, 9.0, 130.0),  # inferior vena cava
        (aorta[0] - 2.0, aorta[1] - aorta_r - 10.0, 3.5, 3.5, arterial_hu),  # SMA
    ):
        ring = _ellipse(x2, y2, cx_, cy_, rx, ry_)
        template[ring] = hu
        vessels |= ring

    # Pancreas centre line, parameterised by x (head on the patient's right, i.e. -x).
    x_head = -rng.uniform(28.0, 40.0)
    x_tail = min(rng.uniform(65.0, 85.0) * axi / 130.0, axi - 25.0)
    y_front = aorta[1] - aorta_r - rng.uniform(16.0, 22.0)
    bulge = rng.uniform(4.0, 10.0)
    y_tail_back = rng.uniform(15.0, 30.0)
    z_head = rng.uniform(0.36, 0.44) * extent
    z_rise = rng.uniform(15.0, 32.0)

    def centre_line(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t = np.clip((x - x_head) / (x_tail - x_head), 0.0, 1.0)
        yc = y_front - bulge * np.sin(np.pi * t) + y_tail_back * t**2
        zc = z_head + z_rise * t**1.3
        return t, yc, zc, (14.0 - 6.0 * t)

    neck_x = x_head + 0.22 * (x_tail - x_head)
    _, neck_y, _, neck_ry = centre_line(np.array([neck_x]))
    smv = _ellipse(x2, y2, neck_x - 4.0, float(neck_y[0] + neck_ry[0] + 5.0), 7.0, 6.5)
    template[smv] = portal_hu
    vessels |= smv
    # Duodenum (lateral to the head) and bowel loops away from the pancreas.
    template[_ellipse(x2, y2, x_head - 26.0, y_front + 4.0, 12.0, 14.0)] = 35.0
    for _ in range(14):
        bx = rng.uniform(-0.75, 0.75) * axi
        by = cy - rng.uniform(0.1, 0.85) * ayi
        if by > y_front - 40.0 and abs(bx) < 90.0:
            continue
        loop = _ellipse(x2, y2, bx, by, rng.uniform(10, 22), rng.uniform(8, 16)) & inner
        template[loop & (template < 0)] = rng.uniform(20.0, 45.0)

    volume = np.empty((n_slices, size, size), dtype=np.float32)
    volume[:] = template
    mask = np.zeros((n_slices, size, size), dtype=np.uint8)

    # Solid organs (3D), clipped to the abdominal cavity.
    liver_hu = rng.uniform(95.0, 118.0)
    liver_c = (-0.45 * axi, cy - 0.1 * ayi, 0.8 * extent)
    liver_semi = (0.5 * axi, 0.78 * ayi, 0.32 * extent)
    _paint_ellipsoid(volume, grid, liver_c, liver_semi, liver_hu, inner)
    _paint_ellipsoid(
        volume, grid, (liver_c[0] + 30, cy - 0.45 * ayi, 0.55 * extent), (16, 12, 25), 8.0, inner
    )  # gallbladder
    _paint_ellipsoid(
        volume,
        grid,
        (0.72 * axi, cy + 0.35 * ayi, 0.72 * extent),
        (24, 45, 0.2 * extent),
        rng.uniform(105, 125),
        inner,
    )  # spleen
    _paint_ellipsoid(
        volume,
        grid,
        (0.25 * axi, cy - 0.5 * ayi, 0.8 * extent),
        (40, 24, 0.15 * extent),
        40.0,
        inner,
    )  # stomach
    for side, shift in ((-1, -10.0), (1, 0.0)):
        centre = (side * 0.48 * axi, spine_y - 4.0, 0.33 * extent + shift)
        _paint_ellipsoid(volume, grid, centre, (27, 22, 0.2 * extent), 170.0, inner)
        _paint_ellipsoid(volume, grid, centre, (16, 13, 0.13 * extent), 120.0, inner)
    if case.metastatic and "liver" in case.sites:
        for _ in range(int(rng.integers(1, 5))):
            radius = rng.uniform(5.0, 12.0)
            (lx, ly, lz), (sx, sy, sz) = liver_c, liver_semi
            lesion = (
                lx + sx * rng.uniform(-0.5, 0.5),
                ly + sy * rng.uniform(-0.5, 0.5),
                lz + sz * rng.uniform(-0.5, 0.5),
            )
            _paint_ellipsoid(volume, grid, lesion, (radius,) * 3, liver_hu - 55.0, inner)

    # Pancreas: an elliptical tube around the centre line, lobulated, vessels kept out.
    found = grid.box(
        (x_head - 20.0, y_front - 30.0, z_head - 25.0),
        (x_tail + 2.0, y_front + 50.0, z_head + z_rise + 25.0),
    )
    if found is None:
        raise RuntimeError("the pancreas fell outside the volume; enlarge z_extent_mm")
    (zs, ys, xs), z, y, x = found
    t, yc, zc, ry = centre_line(x)
    rz = 17.0 - 7.0 * t
    phase = rng.uniform(0, 2 * np.pi, size=2)
    lobes = (
        1.0
        + 0.07 * np.sin(2 * np.pi * x / 19.0 + phase[0])
        + 0.04 * np.sin(2 * np.pi * x / 11.0 + phase[1])
    )
    head_taper = np.sqrt(np.clip(1.0 - ((x_head - x) / 20.0) ** 2, 0.0, 1.0))
    head_taper = np.where(x < x_head, head_taper, 1.0)
    tail_taper = np.sqrt(np.clip(1.0 - ((x - (x_tail - 12.0)) / 14.0) ** 2, 0.0, 1.0))
    tail_taper = np.where(x > x_tail - 12.0, tail_taper, 1.0)
    reach = (lobes * head_taper * tail_taper) ** 2
    pancreas = (((y - yc) / ry) ** 2 + ((z - zc) / rz) ** 2 <= reach) & ~vessels[None, ys, xs]
    pancreas_hu = rng.uniform(92.0, 115.0)
    region = volume[zs, ys, xs]
    region[pancreas] = pancreas_hu
    splenic_vein = (
        (((y - (yc + ry + 2.5)) / 3.5) ** 2 + ((z - zc) / 3.5) ** 2 <= 1.0)
        & (x > neck_x)
        & (x < x_tail - 8.0)
    )
    region[splenic_vein] = portal_hu
    pancreas &= ~splenic_vein
    mask[zs, ys, xs][pancreas] = 1

    _render_tumour(case, grid, volume, mask, vessels, centre_line, x_head, x_tail, pancreas_hu, rng)

    # Scanner noise: a bank of correlated noise slices, drawn per patient and reused across
    # slices in random order (drawing fresh noise for every voxel would dominate the time).
    sigma = float(np.clip(11.0 * math.sqrt(2.5 / thickness), 7.0, 22.0))
    bank_size = 6
    bank = ndimage.gaussian_filter(
        rng.standard_normal((bank_size, size, size), dtype=np.float32), (0, 0.6, 0.6)
    )
    bank *= sigma / max(float(bank.std()), 1e-6)
    order = rng.integers(0, bank_size, size=n_slices)
    shifts = rng.integers(0, size, size=n_slices)
    ct = np.empty((n_slices, size, size), dtype=np.int16)
    for k in range(n_slices):
        noisy = volume[k] + np.roll(bank[order[k]], int(shifts[k]), axis=1)
        np.clip(noisy, -1024.0, 3071.0, out=noisy)
        ct[k] = noisy
    origin_z = -float(rng.integers(150, 400))
    return {
        "ct": ct,
        "mask": mask,
        "spacing": (pixel, pixel, thickness),
        "origin": (float(offsets[0]), float(offsets[0]), origin_z),
    }


def _render_tumour(
    case: _Case,
    grid: _Grid,
    volume: np.ndarray,
    mask: np.ndarray,
    vessels: np.ndarray,
    centre_line: Any,
    x_head: float,
    x_tail: float,
    pancreas_hu: float,
    rng: np.random.Generator,
) -> None:
    """The hypo-attenuating tumour with the graded metastasis signal (module docstring)."""
    s = case.strength
    location = case.clinical["tumour_location"]
    t_location = {"head": 0.06, "other": 0.25, "body": 0.5, "tail": 0.82}[location]
    tx = x_head + (t_location + rng.uniform(-0.04, 0.04)) * (x_tail - x_head)
    _, yc, zc, ry = centre_line(np.array([tx]))
    centre = np.array(
        [tx, yc[0] + rng.uniform(-0.3, 0.3) * ry[0], zc[0] + rng.uniform(-3.0, 3.0)],
        dtype=np.float32,
    )
    radius = case.clinical["tumour_size_mm"] / 2.0
    semi = np.array(
        [radius, radius * rng.uniform(0.75, 0.95), radius * rng.uniform(0.8, 1.0)], dtype=np.float32
    )
    spike_length = 0.9 * s  # in units of the radius, at full strength
    reach = radius * (1.0 + spike_length) + 12.0
    found = grid.box(tuple(centre - reach), tuple(centre + reach))
    if found is None:
        raise RuntimeError("the tumour fell outside the volume; enlarge z_extent_mm")
    (zs, ys, xs), z, y, x = found
    shape = (z.shape[0], y.shape[1], x.shape[2])
    dx = np.broadcast_to(x - centre[0], shape)
    dy = np.broadcast_to(y - centre[1], shape)
    dz = np.broadcast_to(z - centre[2], shape)
    distance = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    offsets = np.stack([dx, dy, dz], axis=-1) / distance[..., None]
    scaled = np.sqrt((dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2)

    lobulation = offsets @ (_unit_vectors(rng, 1)[0] * rng.uniform(0.0, 0.12))
    spicule_dirs = _unit_vectors(rng, 12)
    spicule_amp = spike_length * rng.uniform(0.5, 1.0, size=12).astype(np.float32)
    spicules = _spikes(offsets @ spicule_dirs.T, spicule_amp)
    solid = scaled <= 1.0 + lobulation + 0.3 * spicules
    if not solid.any():  # a tumour smaller than a voxel still occupies the nearest one
        solid.flat[int(np.argmin(scaled))] = True
    strands = (scaled <= 1.0 + spicules) & ~solid

    outside = np.maximum(scaled - 1.0, 0.0) * radius  # ~mm beyond the tumour's surface
    strand_dirs = _unit_vectors(rng, 16)
    strand_field = _spikes(offsets @ strand_dirs.T, np.full(16, 1.0, dtype=np.float32))
    stranding = s * (
        110.0 * np.minimum(strand_field, 1.0) * np.exp(-outside / 7.0)
        + 30.0 * np.exp(-outside / 4.0)
    )

    region = volume[zs, ys, xs]
    keep_vessels = vessels[None, ys, xs]
    fat = (region < -40.0) & (region > -200.0) & ~solid
    region[fat] = np.minimum(region[fat] + stranding[fat], 35.0)

    sigma = (2.0 / grid.thickness_mm, 2.0 / grid.pixel_mm, 2.0 / grid.pixel_mm)
    texture = _smooth_noise(rng, shape, sigma)
    necrosis = _smooth_noise(rng, shape, tuple(1.5 * v for v in sigma))
    necrotic = (
        necrosis > np.quantile(necrosis[solid], 1.0 - 0.25 * s)
        if s > 0.02
        else np.zeros(shape, bool)
    )
    tumour_hu = pancreas_hu - rng.uniform(35.0, 60.0)  # hypo-attenuating
    values = tumour_hu + (5.0 + 30.0 * s) * texture - 35.0 * s * necrotic
    paint = solid & ~keep_vessels
    region[paint] = values[paint]
    spicule_tissue = strands & ~keep_vessels & (region < 0)
    region[spicule_tissue] = tumour_hu + 10.0 + 8.0 * texture[spicule_tissue]
    mask[zs, ys, xs][paint] = 2


# ----------------------------------------------------------------------------------------------
# Public API


def generate_patient(
    index: int, *, seed: int = 0, size: int | None = None, config: PhantomConfig | None = None
) -> PhantomPatient:
    """Patient number ``index`` (0-based) of the cohort of ``seed``.

    Each patient has its own random streams (``SeedSequence([seed, index])``), so a patient is
    the same whether generated alone or in a cohort of any size. ``size`` overrides
    ``config.size``.
    """
    config = config or PhantomConfig()
    if size is not None and size != config.size:
        config = PhantomConfig(**{**config.__dict__, "size": size})
    clinical_stream, image_stream = np.random.SeedSequence([seed, index]).spawn(2)
    case = _draw_case(index, np.random.default_rng(clinical_stream), config)
    image = _render(case, config, np.random.default_rng(image_stream))
    return PhantomPatient(
        study_id=case.study_id,
        ct=image["ct"],
        mask=image["mask"],
        spacing=image["spacing"],
        origin=image["origin"],
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        clinical=case.clinical,
        metastatic=case.metastatic,
        site_labels=_site_labels(case),
        signal_strength=case.strength,
        identifiers=case.identifiers,
        seed=seed,
        index=index,
    )


def iter_cohort(
    n_patients: int, *, seed: int = 0, size: int | None = None, config: PhantomConfig | None = None
) -> Iterator[PhantomPatient]:
    """Patients one at a time: a 512-matrix cohort does not fit in memory all at once."""
    for index in range(n_patients):
        yield generate_patient(index, seed=seed, size=size, config=config)


def generate_cohort(
    n_patients: int, *, seed: int = 0, size: int | None = None, config: PhantomConfig | None = None
) -> list[PhantomPatient]:
    """A whole cohort in memory (for small ``size``)."""
    return list(iter_cohort(n_patients, seed=seed, size=size, config=config))


def _uid(patient: PhantomPatient, *parts: object) -> str:
    """A DICOM UID derived from the seed, the patient and ``parts``: same input, same UID."""
    from pydicom.uid import generate_uid

    return generate_uid(
        entropy_srcs=["pmpd-phantom", str(patient.seed), patient.study_id, *map(str, parts)]
    )


def _decimal(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) holding ``value`` exactly."""
    text = repr(float(value))
    if len(text) > 16:
        raise ValueError(f"{value} does not fit a DICOM decimal string exactly")
    return text


def write_dicom_series(patient: PhantomPatient, folder: str | Path) -> list[Path]:
    """Write the CT as a DICOM series (CT Image Storage, one file per slice) into ``folder``.

    Headers carry the geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness, RescaleSlope/Intercept), the manufacturer, and fake direct identifiers
    (PatientName, PatientID, PatientBirthDate, InstitutionName...) for de-identification to
    remove. UIDs are derived from the seed, so a rewrite gives identical files.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = patient.identifiers
    study_uid = _uid(patient, "study")
    series_uid = _uid(patient, "series")
    frame_uid = _uid(patient, "frame")
    x0, y0, z0 = patient.origin
    sx, sy, sz = patient.spacing
    thickness = _decimal(sz)
    n_slices, rows, columns = patient.ct.shape
    stored = (patient.ct.astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)
    paths = []
    for k in range(n_slices):
        sop_uid = UID(_uid(patient, "instance", k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.Manufacturer = patient.clinical["ct_manufacturer"]
        ds.ManufacturerModelName = "PMPD phantom"
        ds.InstitutionName = ids["institution_name"]
        ds.ReferringPhysicianName = ids["referring_physician"]
        ds.PatientName = ids["patient_name"]
        ds.PatientID = ids["patient_id"]
        ds.PatientBirthDate = ids["birth_date"]
        ds.PatientSex = "F" if patient.clinical["sex"] == "female" else "M"
        ds.PatientAge = f"{int(patient.clinical['age_at_diagnosis_years']):03d}Y"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ids["study_date"]
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = ids["accession_number"]
        ds.StudyID = "1"
        ds.StudyDescription = "CT ABDOMEN PANCREAS"
        ds.SeriesDescription = f"Portal venous {sz:g} mm"
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ContrastBolusAgent = "IODINATED"
        ds.KVP = "120"
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [_decimal(x0), _decimal(y0), _decimal(z0 + k * sz)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [_decimal(sy), _decimal(sx)]
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.SliceLocation = _decimal(z0 + k * sz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "75"
        ds.WindowWidth = "250"
        ds.PixelData = stored[k].tobytes()
        path = folder / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(patient: PhantomPatient, folder: str | Path) -> tuple[Path, Path]:
    """Write ``ct.nii.gz`` (int16 HU) and ``mask.nii.gz`` (uint8 labels) with SimpleITK."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in (("ct.nii.gz", patient.ct), ("mask.nii.gz", patient.mask)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(patient.spacing)
        image.SetOrigin(patient.origin)
        image.SetDirection(patient.direction)
        sitk.WriteImage(image, str(folder / name), useCompression=True)
        written.append(folder / name)
    return written[0], written[1]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def write_clinical_table(
    patients: Iterable[PhantomPatient | Mapping[str, Any]], path: str | Path
) -> Path:
    """Write the clinical variables as CSV in the import template's column order
    (``CLINICAL_COLUMNS``); blanks for missing values, at most one decimal."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CLINICAL_COLUMNS)
        for patient in patients:
            row = patient.clinical if isinstance(patient, PhantomPatient) else patient
            writer.writerow([_csv_value(row.get(column)) for column in CLINICAL_COLUMNS])
    return path
