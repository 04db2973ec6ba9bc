"""Every page of the three journeys in a real browser (issue 12 items 7-8): axe-core (from npm,
served by the platform) finds no serious or critical violation at 390 px and at 1440 px, and a
crawl of every link each role can reach answers below 400 with no console error. Screenshots at
both widths are kept under test-artifacts/a11y/."""

from __future__ import annotations

import re
from collections import Counter
from urllib.parse import parse_qsl, urljoin, urlparse

import pytest
from browser import ARTIFACTS, chromium, log_in
from engine_fixtures import make_ready_version
from scored import make_scored_cohort
from tablemaker import rows, to_csv

from pmpd_web.accounts.audit import record
from pmpd_web.accounts.models import AuditAction
from pmpd_web.cohorts.importer import upload_table

WIDTHS = (390, 1440)
SERIOUS = {"serious", "critical"}
# Links that download a file or leave the platform's pages: checked for their status only.
DOWNLOAD = re.compile(
    r"(\.csv|\.xlsx|\.png|\.svg|\.json|report\.html|/export/|/tables/|/figures/|template\.)"
    r"|^/api/(?!docs/|redoc/$)"
)
NOT_FOLLOWED = re.compile(r"^/(admin/|ohif/|accounts/logout)")
PER_SHAPE = 2


@pytest.fixture
def sync_orm_beside_playwright(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def world(cohort, members, sync_orm_beside_playwright):
    version = make_ready_version(cohort, name="pmpd-a11y", is_active=True, is_synthetic=True)
    patients = make_scored_cohort(cohort, version, 40, prefix="A11Y")
    table_import = upload_table(
        cohort=cohort, user=members["coordinator"], data=to_csv(rows(3)), filename="t.csv"
    )
    record(members["clinician"], AuditAction.VIEW_PATIENT, patient=patients[0])
    c = f"/cohorts/{cohort.pk}"
    patient = f"{c}/patients/{patients[0].study_id}/"
    return {
        "coordinator": [
            "/",
            f"{c}/",
            f"{c}/import/",
            f"{c}/import/{table_import.pk}/",
            patient,
            f"{patient}images/",
            f"{c}/engine/",
            f"{c}/audit/",
            f"{c}/predictions/",
            "/roles/",
            "/no-such-page/",
        ],
        "clinician": ["/", f"{c}/", patient, f"{c}/predictions/", "/roles/"],
        "statistician": [
            "/",
            "/analytics/",
            f"/analytics/evaluation/?cohort={cohort.pk}&model_version={version.pk}",
            f"/analytics/survival/?cohort={cohort.pk}&model_version={version.pk}",
            f"{c}/",
            patient,
        ],
    }


AXE_JS = """async () => {
  const result = await axe.run(document, {
    iframes: false,
    resultTypes: ['violations'],
  });
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ')),
  }));
}"""


def _slug(url: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", url.lower()).strip("-") or "home"


def test_axe_finds_no_serious_violation_on_any_journey_page(live_server, world):
    base = live_server.url
    out = ARTIFACTS / "a11y"
    out.mkdir(parents=True, exist_ok=True)
    found: list[str] = []
    widths_seen: dict[int, int] = {}
    with chromium() as browser:
        for role, urls in world.items():
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                log_in(page, base, role)
                for url in urls:
                    page.goto(base + url)
                    page.wait_for_load_state("networkidle")
                    page.add_script_tag(url=f"{base}/static/vendor/axe.min.js")
                    for v in page.evaluate(AXE_JS):
                        if v["impact"] in SERIOUS:
                            found.append(
                                f"{role} {width}px {url}: {v['id']} ({v['help']}) {v['nodes']}"
                            )
                    page_width = page.evaluate("document.documentElement.scrollWidth")
                    if width == 390 and page_width > width + 1:
                        found.append(f"{role} {url}: {page_width} px wide at 390 px")
                    page.screenshot(
                        path=str(out / f"{role}-{width}-{_slug(url)}.png"), full_page=True
                    )
                    widths_seen[width] = widths_seen.get(width, 0) + 1
                page.close()
    print(f"\naxe on {sum(widths_seen.values())} page views, screenshots in {out}")
    assert widths_seen == {w: sum(len(u) for u in world.values()) for w in WIDTHS}
    assert not found, "\n".join(found)


def _shape(url: str) -> str:
    parsed = urlparse(url)
    path = re.sub(r"/patients/[^/]+/", "/patients/*/", parsed.path)
    path = re.sub(r"\d+", "#", path)
    keys = ",".join(sorted({k for k, _ in parse_qsl(parsed.query)} - {"page"}))
    return f"{path}?{keys}"


def test_every_link_each_role_reaches_answers_without_error(live_server, world):
    base = live_server.url
    failures: list[str] = []
    visited_total = 0
    with chromium() as browser:
        for role in world:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            console: list[str] = []
            page.on(
                "console",
                lambda m, c=console: c.append(f"{m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e, c=console: c.append(f"page error: {e}"))
            log_in(page, base, role)
            queue, seen, shapes = ["/"], {"/"}, Counter()
            while queue:
                url = queue.pop(0)
                if DOWNLOAD.search(url):
                    status = page.request.get(base + url).status
                    if status >= 400:
                        failures.append(f"{role}: {url} answered {status}")
                    continue
                console.clear()
                response = page.goto(base + url)
                visited_total += 1
                page.wait_for_load_state("networkidle")
                if response is None or response.status >= 400:
                    failures.append(f"{role}: {url} answered {response and response.status}")
                failures.extend(f"{role}: {url}: {line}" for line in console)
                if url.startswith("/api/"):
                    continue
                for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
                    target = urlparse(urljoin(base + url, href))
                    if target.netloc != urlparse(base).netloc:
                        continue
                    link = target.path + (f"?{target.query}" if target.query else "")
                    if link in seen or NOT_FOLLOWED.search(target.path):
                        continue
                    seen.add(link)
                    shape = _shape(link)
                    if shapes[shape] >= PER_SHAPE:
                        continue
                    shapes[shape] += 1
                    queue.append(link)
            page.close()
    print(f"\ncrawl: {visited_total} pages visited for {len(world)} roles")
    assert visited_total > 20
    assert not failures, "\n".join(failures)
