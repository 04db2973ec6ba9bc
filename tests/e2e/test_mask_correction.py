"""A reader corrects an automatic mask in OHIF's segmentation mode (issue 13), in a real browser.

A patient's CT goes through the platform's ingest; a segmentation model's prediction is stored
as the segmentation job stores it (an automatic mask version, needs review). The reader opens
it from the mask versions page ("Correct in the viewer"), selects the tumour segment and the
brush, paints a stroke beside the tumour on one slice where the mask is empty, and saves
through the segmentation's Export menu (STOW-RS to the platform). The platform then holds a
version "edited by" the reader whose voxels differ from the automatic one on the painted slice
only, with more tumour there; the reader approves it on the page, and the engine's
preprocessing input reads it. Screenshots of each step are kept under test-artifacts/."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from browser import (
    ARTIFACTS,
    REPORT_VIOLATIONS_JS,
    VIEWER_LOAD_S,
    chromium,
    log_in,
    wait_for_pixels,
)
from dicom_fixtures import phantom
from django.conf import settings
from factories import make_patient
from imagemaker import dicom_series, folder_files, ingest
from playwright.sync_api import Page
from scipy import ndimage

from inference.cache import load_patient_volumes, patient_images
from pmpd_web.cohorts.models import Patient
from pmpd_web.imaging.ingest.outputs import stored_sources
from pmpd_web.imaging.mask_versions import read_mask, store_mask_version
from pmpd_web.imaging.models import ImageSeries, MaskVersion

STUDY_ID = "PMPD-E2E-EDIT"
MODEL = "nnU-Net pancreas v1 (2d, fold 0)"
TUMOUR = 2
# The stroke: a few brush dabs along the image's rows, kept this far (pixels) from any voxel
# of the automatic mask so that everything it paints was background.
STROKE_PX = 4
CLEARANCE_PX = 9
BRUSH_RADIUS_MM = 3
# The viewport's cornerstone stack viewport, and where a patient point is on the page.
VIEWPORT_JS = """() => {
  const found = window.cornerstone.getEnabledElements().find(e => e.viewport.getImageIds);
  return found && found.viewport;
}"""
# The image the viewport shows and the one showing ``sop``: indices in its stack.
STACK_INDEX_JS = f"""sop => {{
  const viewport = ({VIEWPORT_JS})();
  const wanted = viewport.getImageIds().findIndex(id => id.includes('/instances/' + sop + '/'));
  return [viewport.getCurrentImageIdIndex(), wanted];
}}"""
PAGE_POSITION_JS = f"""world => {{
  const viewport = ({VIEWPORT_JS})();
  const [x, y] = viewport.worldToCanvas(world);
  const box = viewport.canvas.getBoundingClientRect();
  return [box.left + x, box.top + y];
}}"""


@dataclass
class Target:
    """Where the reader paints: the slice (its SOP instance UID and index in the mask) and the
    stroke's pixels (row, column) on it, with their patient coordinates (mm)."""

    sop_instance_uid: str
    z: int
    pixels: list[tuple[int, int]]
    world: list[list[float]]


def _automatic_version(cohort, coordinator, folder: Path) -> MaskVersion:
    """The patient's CT through the ingest, and a model's mask stored as the segmentation job
    stores its predictions (no nnU-Net run needed: the phantom's own mask stands in)."""
    case = phantom(index=3, size=128, n_slices=16)
    case.study_id = STUDY_ID
    make_patient(cohort, STUDY_ID)
    dicom_series(case, folder / STUDY_ID / "ct")
    _, job = ingest(cohort, coordinator, folder_files(folder, "drop/"))
    assert job.status == "succeeded", job.error
    ct = ImageSeries.objects.get(modality="CT", study__patient__study_id=STUDY_ID)
    return store_mask_version(
        ct_series=ct,
        mask=case.mask,
        source=MaskVersion.Source.AUTOMATIC,
        source_label=MODEL,
        uncertainty=0.12,
    )


def _target(version: MaskVersion, mask: np.ndarray) -> Target:
    """A stroke beside the tumour on its largest slice, on background well clear of the mask."""
    z = int(np.argmax((mask == TUMOUR).sum(axis=(1, 2))))
    source = stored_sources(version.ct_series)[z]
    clear = ~ndimage.binary_dilation(mask[z] > 0, iterations=CLEARANCE_PX)
    rows, columns = np.nonzero(mask[z] == TUMOUR)
    row, column = int(rows.mean()), int(columns.max())
    while not clear[row, column : column + STROKE_PX + 1].all():
        column += 1
    pixels = [(row, column + step) for step in range(STROKE_PX + 1)]
    position = np.asarray(source.ImagePositionPatient, float)
    along_row, along_column = np.asarray(source.ImageOrientationPatient, float).reshape(2, 3)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    world = [
        (position + c * column_spacing * along_row + r * row_spacing * along_column).tolist()
        for r, c in pixels
    ]
    return Target(str(source.SOPInstanceUID), z, pixels, world)


def _show_slice(viewer: Page, sop_instance_uid: str) -> None:
    """Scroll the viewport (mouse wheel, as a reader does) to the image ``sop_instance_uid``,
    one notch at a time, each waited for."""
    canvas = viewer.locator("canvas.cornerstone-canvas").first
    box = canvas.bounding_box()
    assert box is not None
    viewer.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    notch = 120
    for _ in range(40):
        current, wanted = viewer.evaluate(STACK_INDEX_JS, sop_instance_uid)
        assert wanted >= 0, f"the viewport's stack has no image {sop_instance_uid}"
        if current == wanted:
            return
        viewer.mouse.wheel(0, notch if wanted > current else -notch)
        viewer.wait_for_function(
            f"() => ({VIEWPORT_JS})().getCurrentImageIdIndex() !== {current}", timeout=10_000
        )
        moved, _ = viewer.evaluate(STACK_INDEX_JS, sop_instance_uid)
        if abs(moved - wanted) > abs(current - wanted):
            notch = -notch  # this viewer scrolls the other way
    raise AssertionError(f"the viewport never showed the image {sop_instance_uid}")


def _wait_until_still(viewer: Page, *, still_s: float = 2.0) -> None:
    """Wait until the viewport has shown the same image for ``still_s`` (the jump that
    selecting a segment starts is animated, and late on a loaded machine)."""
    deadline = time.monotonic() + VIEWER_LOAD_S
    shown, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = viewer.evaluate(f"() => ({VIEWPORT_JS})().getCurrentImageIdIndex()")
        if now != shown:
            shown, since = now, time.monotonic()
        elif time.monotonic() - since >= still_s:
            return
        viewer.wait_for_timeout(250)
    raise AssertionError("the viewport never settled on an image")


def _paint_and_save(viewer: Page, target: Target) -> None:
    shots = ARTIFACTS / "mask-correction"
    wait_for_pixels(viewer.main_frame, lambda p: p["coloured"] > 20, "the automatic mask")
    viewer.get_by_text("Tumour", exact=True).first.wait_for(timeout=VIEWER_LOAD_S * 1000)
    # Selecting a segment moves the viewport to its centre: choose it first, then the slice.
    viewer.locator("[data-cy=data-row-title]", has_text="Tumour").click()
    _wait_until_still(viewer)
    viewer.locator("[data-cy=Brush-btn]").click()
    radius = viewer.locator("[data-cy=brush-radius] input[type=number]")
    radius.fill(str(BRUSH_RADIUS_MM))
    radius.press("Enter")
    _show_slice(viewer, target.sop_instance_uid)
    viewer.screenshot(path=f"{shots}-3-brush.png")
    current, wanted = viewer.evaluate(STACK_INDEX_JS, target.sop_instance_uid)
    assert current == wanted, "the viewport left the slice to paint"
    points = [viewer.evaluate(PAGE_POSITION_JS, world) for world in target.world]
    viewer.mouse.move(*points[0])
    viewer.mouse.down()
    for point in points[1:]:
        viewer.mouse.move(*point, steps=3)
    viewer.mouse.up()
    viewer.wait_for_timeout(500)
    viewer.screenshot(path=f"{shots}-4-painted.png")
    viewer.locator("[data-cy=segmentation-collapsed-more-btn-Labelmap]").click()
    viewer.screenshot(path=f"{shots}-5-menu.png")
    viewer.get_by_text("Export", exact=True).click()
    viewer.get_by_text("DICOM SEG", exact=True).click()
    viewer.screenshot(path=f"{shots}-6-store-dialog.png")
    with viewer.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/dicomweb/studies"),
        timeout=VIEWER_LOAD_S * 1000,
    ) as stored:
        viewer.get_by_role("button", name="Save").click()
    assert stored.value.status == 200, stored.value.text()
    viewer.get_by_text("Segmentation saved successfully").wait_for(timeout=60_000)
    viewer.screenshot(path=f"{shots}-7-saved.png")


def test_a_reader_paints_an_automatic_mask_saves_it_and_approves_it(
    live_server, cohort, members, tmp_path
):
    if not (Path(settings.PMPD_OHIF_ROOT) / "index.html").is_file():
        pytest.fail("the OHIF viewer is not built: `make frontend` builds it")
    reader = members["reader"]
    reader.first_name, reader.last_name = "Rosa", "Reader"
    reader.save()
    automatic = _automatic_version(cohort, members["coordinator"], tmp_path / "in")
    automatic_mask = read_mask(automatic)
    target = _target(automatic, automatic_mask)
    ARTIFACTS.mkdir(exist_ok=True)
    shots = ARTIFACTS / "mask-correction"
    problems: list[str] = []
    console: list[str] = []
    # The reader paints and saves. (Playwright's event loop runs in this thread while the
    # browser is open, where Django refuses the ORM: the checks come after.)
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        context.expose_function("reportViolation", lambda text: problems.append(f"CSP: {text}"))
        context.add_init_script(REPORT_VIOLATIONS_JS)
        page = context.new_page()
        log_in(page, live_server.url, "reader")
        page.goto(f"{live_server.url}/cohorts/{cohort.pk}/patients/{STUDY_ID}/masks/")
        page.screenshot(path=f"{shots}-1-versions.png", full_page=True)
        with page.expect_popup() as popup:
            page.get_by_role("link", name="Correct in the viewer").click()
        viewer = popup.value
        viewer.set_viewport_size({"width": 1500, "height": 1000})
        viewer.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        viewer.on(
            "console",
            lambda m: console.append(m.text) if m.type == "error" else None,
        )
        viewer.on(
            "response",
            lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
        )
        try:
            _paint_and_save(viewer, target)
        finally:
            viewer.screenshot(path=f"{shots}-2-viewer.png")
    print(f"\nthe viewer's console errors: {console}")
    # No refused request, no uncaught error, no Content-Security-Policy violation (workers,
    # WebAssembly and blobs the segmentation tools use included).
    assert not problems, problems

    edited = MaskVersion.objects.get(ct_series=automatic.ct_series, number=automatic.number + 1)
    assert edited.provenance == "edited by Rosa Reader"
    assert edited.status == MaskVersion.Status.NEEDS_REVIEW and edited.produced_by == reader
    assert edited.edited_from == automatic
    edited_mask = read_mask(edited)
    changed = edited_mask != automatic_mask
    assert np.flatnonzero(changed.any(axis=(1, 2))).tolist() == [target.z]
    # Everything the stroke changed was background and is tumour now, where it was painted.
    assert (automatic_mask[changed] == 0).all() and (edited_mask[changed] == TUMOUR).all()
    for row, column in target.pixels:
        assert edited_mask[target.z, row, column] == TUMOUR
    painted = int(changed.sum())
    assert edited.tumour_voxels == automatic.tumour_voxels + painted
    print(f"\npainted {painted} voxels of tumour on slice {target.z}")

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        log_in(page, live_server.url, "reader")
        page.goto(f"{live_server.url}/cohorts/{cohort.pk}/patients/{STUDY_ID}/masks/")
        row = page.locator("tr", has=page.locator("td", has_text="edited by Rosa Reader"))
        row.get_by_role("button", name="Approve").click()
        page.get_by_text(f"Mask version {edited.number} approved").wait_for(timeout=30_000)
        page.screenshot(path=f"{shots}-8-approved.png", full_page=True)
    edited.refresh_from_db()
    assert edited.status == MaskVersion.Status.APPROVED and edited.reviewed_by == reader
    # What training and scoring preprocess (inference.cache.preprocessed_for) is the edit.
    engine_input = patient_images(Patient.objects.get(cohort=cohort, study_id=STUDY_ID))
    assert engine_input.mask.content_hash == edited.content_hash
    _, mask_read = load_patient_volumes(engine_input)
    np.testing.assert_array_equal(mask_read.array, edited_mask)
