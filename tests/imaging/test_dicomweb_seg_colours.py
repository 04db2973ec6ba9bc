"""The platform's DICOM SEG as viewers read it: each segment carries its recommended display
colour, so OHIF shows the pancreas and the tumour in fixed colours (and no warning toast about
missing colours on every open). Issue 10, item 11."""

from __future__ import annotations

import highdicom as hd
import pydicom
from dicom_fixtures import phantom

from inference.pmpd.phantom import write_dicom_series
from pmpd_web.imaging.dicom_series import (
    PANCREAS_DISPLAY_RGB,
    TUMOUR_DISPLAY_RGB,
    build_segmentation,
    encode,
)


def test_platform_seg_recommends_a_fixed_colour_per_segment(tmp_path):
    case = phantom(index=3, n_slices=8)
    sources = [pydicom.dcmread(path) for path in write_dicom_series(case, tmp_path / "ct")]
    seg = build_segmentation(
        sources, case.mask, series_uid="2.25.71", sop_uid="2.25.72", content_date="20200101"
    )
    written = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode(seg)))
    colours = {
        segment.SegmentLabel: tuple(segment.RecommendedDisplayCIELabValue)
        for segment in written.SegmentSequence
    }
    assert set(colours) == {"Pancreas", "Tumour"}
    rgb = {
        label: hd.color.CIELabColor.from_dicom_value(value).to_rgb()
        for label, value in colours.items()
    }
    assert rgb == {"Pancreas": PANCREAS_DISPLAY_RGB, "Tumour": TUMOUR_DISPLAY_RGB}
