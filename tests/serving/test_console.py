"""The web console in a real browser (headless Chromium from the system's packages, driven by
Playwright with its executable path: no browser download) against a real `tokenreel serve`.

One service and one browser for the module. The pictures are checked where they are drawn: the
colour of every token cell's outline is read back from a screenshot of the canvas and compared
with the fate `jobs.visualize.render.token_fates` gives the same token set (Fig. S3), and with
the rows the service says layer K kept (Fig. S2).

`TOKENREEL_CONSOLE_SCREENSHOT=docs/console.png` also saves the video page (after a question) as
the README's screenshot.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import (
    CONSOLE_LONG_FRAMES,
    ConsoleStore,
    serving,
    wait_for_ok,
    write_console_store,
)

CHROMIUM = Path(os.environ.get("TOKENREEL_CHROMIUM", "/usr/bin/chromium"))
API_KEY = "console-test-key"
QUESTION = "what happens ?"  # words of the tiny model's word-level vocabulary
SCREENSHOT_ENV = "TOKENREEL_CONSOLE_SCREENSHOT"
COLOUR_TOLERANCE = 12  # per channel: canvas colours come back exactly; JPEG frames are beneath

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ConsoleStore:
    return write_console_store(tmp_path_factory.mktemp("console") / "store")


@pytest.fixture(scope="module")
def service(store: ConsoleStore) -> Iterator[str]:
    with serving(store.root, "--num-cpus", "0.5", api_key=API_KEY) as served:
        wait_for_ok(served, "/readyz")
        yield served.url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to run as root (CI containers).
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service: str) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=service)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page, key: str = API_KEY) -> None:
    page.goto("/ui/")
    page.locator("#key-input").fill(key)
    page.locator("#key-submit").click()


def api(service: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.Client(base_url=service, headers=headers, timeout=120)


def test_without_the_key_nothing_but_the_prompt(page, service: str) -> None:
    page.goto("/ui/")
    sync_api.expect(page.locator("#key-view")).to_be_visible()
    assert page.locator("#library-view").is_hidden() and page.locator("#nav").is_hidden()
    sign_in(page, "not-the-key")
    sync_api.expect(page.locator("#key-error")).to_contain_text("refused")
    assert page.locator("#library-view").is_hidden()
    assert page.evaluate("sessionStorage.getItem('tokenreel.apiKey')") is None
    # The API behind the page refuses it too.
    for path in ("/v1/videos", "/v1/runs", "/v1/videos/consoleours01/thumbnail"):
        assert httpx.get(service + path, timeout=30).status_code == 401


def test_the_library_lists_indexed_and_failed_videos(page, store: ConsoleStore) -> None:
    sign_in(page)
    rows = page.locator("#videos tbody tr")
    sync_api.expect(rows).to_have_count(len(store.indexed) + 2)
    statuses = {
        row.get_attribute("data-video-id"): row.get_attribute("data-status") for row in rows.all()
    }
    assert statuses == {
        **dict.fromkeys(store.indexed, "indexed"),
        store.failed: "failed",
        store.interrupted: "interrupted",
    }
    failed = page.locator(f'#videos tr[data-video-id="{store.failed}"]')
    sync_api.expect(failed.locator(".reason")).to_have_text(store.failed_reason)
    indexed = page.locator('#videos tr[data-video-id="consoleours01"]')
    sync_api.expect(indexed).to_contain_text("36 \u2192 9")  # 4 x 3 x 3 tokens, r = 0.25
    # Its thumbnail is the first frame of the preview strip (frames of 64 x 48 pixels).
    thumb = indexed.locator("canvas.thumb")
    page.wait_for_function("c => c.width === 96 && c.height === 72", arg=thumb.element_handle())
    pixels = np.asarray(Image.open(BytesIO(thumb.screenshot())).convert("RGB"))
    assert pixels.std() > 5  # a picture, not a blank canvas
    # The failed filter shows only the failure; the key was asked once for the tab.
    page.locator("#status-filter").select_option("failed")
    sync_api.expect(rows).to_have_count(1)
    sync_api.expect(rows.first).to_have_attribute("data-video-id", store.failed)
    page.goto("/ui/#/runs")
    page.reload()
    run_rows = page.locator("#runs tbody tr")
    sync_api.expect(run_rows).to_have_count(2)  # newest first
    sync_api.expect(run_rows.nth(0)).to_contain_text("interrupted")
    sync_api.expect(run_rows.nth(1)).to_contain_text("finished")
    assert "/srv/" not in page.content()  # the run's source is a server path: not shown


def _canvas_pixels(page, selector: str) -> tuple[np.ndarray, dict]:
    canvas = page.locator(selector)
    # The figure is drawn once its window of frames has arrived, which can be after the page
    # says it is ready: wait for the drawing (its layout attribute), then read it.
    sync_api.expect(canvas).to_have_attribute("data-layout", re.compile(r"^\{"))
    layout = json.loads(canvas.get_attribute("data-layout"))
    image = Image.open(BytesIO(canvas.screenshot())).convert("RGB")
    return np.asarray(image), layout


def _outline_pixel(layout: dict, frame: int, h: int, w: int) -> tuple[int, int]:
    """(y, x) in the middle of the left edge of a cell's outline (the page's `cellBox` and
    `outline`, as jobs.visualize.render lays panels out)."""
    _, rows, cols = layout["grid"]
    row, col = divmod(frame, layout["columns"])
    ox = layout["gap"] + col * (layout["panelWidth"] + layout["gap"])
    oy = layout["gap"] + row * (layout["panelHeight"] + layout["gap"])
    x0 = ox + (w * layout["panelWidth"]) // cols
    y0 = oy + (h * layout["panelHeight"]) // rows
    y1 = oy + ((h + 1) * layout["panelHeight"]) // rows - 1
    return (y0 + y1) // 2, x0 + 1 + layout["line"] // 2


def _cells(layout: dict) -> Iterator[tuple[int, int, int, int]]:
    """(frame in the drawn window, t, h, w) of every token cell drawn."""
    _, rows, cols = layout["grid"]
    for frame in range(layout["frames"]):
        t = (layout["frameStart"] + frame) // layout["perStep"]
        for h in range(rows):
            for w in range(cols):
                yield frame, t, h, w


def _close(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= COLOUR_TOLERANCE))


def _token_set(store: ConsoleStore, video_id: str):
    from storage.store import open_store

    return open_store(str(store.root)).load(video_id)


def test_the_outer_stage_fates_are_drawn_at_their_cells(page, store: ConsoleStore) -> None:
    from jobs.visualize.render import token_fates

    video = "consolevzip02"  # VisionZip: kept, merged and dropped tokens
    token_set = _token_set(store, video)
    fates = token_fates(token_set)
    assert len(np.unique(fates)) == 3
    sign_in(page)
    page.goto(f"/ui/#/video/{video}")
    sync_api.expect(page.locator("body")).to_have_attribute("data-ready", f"#/video/{video}")
    pixels, layout = _canvas_pixels(page, "#fig-s3")
    assert layout["frames"] == token_set.frame_count == 4 and layout["grid"] == [4, 3, 3]
    assert not _wrong_fates(pixels, layout, fates)
    sync_api.expect(page.locator("#frame-info")).to_have_text("frames 1\u20134 of 4")


def _wrong_fates(pixels: np.ndarray, layout: dict, fates: np.ndarray) -> list:
    """The cells of the drawn window whose outline is not their fate's colour."""
    from jobs.visualize.render import FATE_COLOURS

    wrong = []
    for frame, t, h, w in _cells(layout):
        expected = FATE_COLOURS[int(fates[t, h, w])]
        pixel = pixels[_outline_pixel(layout, frame, h, w)]
        if not _close(pixel, expected):
            wrong.append((frame, h, w, tuple(pixel), expected))
    return wrong


def _wrong_kept(pixels: np.ndarray, layout: dict, assignment: np.ndarray, kept_rows: set) -> list:
    """The cells of the drawn window outlined as kept at layer K, or not, wrongly."""
    from jobs.visualize.render import QUESTION_KEPT_COLOUR

    wrong = []
    for frame, t, h, w in _cells(layout):
        kept = int(assignment[t, h, w]) in kept_rows
        pixel = pixels[_outline_pixel(layout, frame, h, w)]
        if kept != _close(pixel, QUESTION_KEPT_COLOUR):
            wrong.append((frame, h, w, kept, tuple(pixel)))
    return wrong


def _figure_height(layout: dict, frames: int) -> int:
    """The canvas height of `frames` panels laid out as the page lays them out."""
    rows = -(-frames // layout["columns"])
    return layout["gap"] + rows * (layout["panelHeight"] + layout["gap"])


def test_a_question_streams_its_answer_and_draws_what_layer_k_kept(
    page, store: ConsoleStore, service: str
) -> None:
    video = "consolevzip02"  # all three fates in the screenshot
    with api(service) as client:
        whole = client.post(
            f"/v1/videos/{video}/ask", json={"question": QUESTION, "include_kept_visual": True}
        )
    assert whole.status_code == 200, whole.text
    expected = whole.json()
    sign_in(page)
    page.goto(f"/ui/#/video/{video}")
    sync_api.expect(page.locator("body")).to_have_attribute("data-ready", f"#/video/{video}")
    page.locator("#question").fill(QUESTION)
    page.locator("#ask").click()
    answer = page.locator("#answer")
    sync_api.expect(answer).to_have_attribute("data-done", "true", timeout=120_000)
    # Streamed: the page received the answer in pieces, and they add up to the whole answer.
    assert int(answer.get_attribute("data-chunks")) >= 2
    assert answer.text_content() == expected["answer"]
    figures = page.locator("#answer-figures")
    sync_api.expect(figures).to_contain_text("FLOPs ratio")
    sync_api.expect(figures).to_contain_text(
        f"{expected['tokens']['original_visual']} in the video"
    )

    token_set = _token_set(store, video)
    kept_rows = set(expected["kept_visual"])
    assert 0 < len(kept_rows) < token_set.kept_count
    assignment = token_set.assignment.reshape(token_set.grid).numpy()
    pixels, layout = _canvas_pixels(page, "#fig-s2")
    assert not _wrong_kept(pixels, layout, assignment, kept_rows)

    if os.environ.get(SCREENSHOT_ENV):
        page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)


def test_a_long_video_is_drawn_one_window_of_frames_at_a_time(
    page, store: ConsoleStore, service: str
) -> None:
    """Issue 16: a video of more frames than a page holds is drawn one window at a time (the
    canvas never holds more than a window), the next window's cells carry their own tokens'
    fates, and the question's Fig. S2 follows the window shown."""
    from jobs.visualize.render import token_fates

    video, total = "consolelong03", CONSOLE_LONG_FRAMES
    with api(service) as client:
        whole = client.post(
            f"/v1/videos/{video}/ask", json={"question": QUESTION, "include_kept_visual": True}
        )
    assert whole.status_code == 200, whole.text
    kept_rows = set(whole.json()["kept_visual"])
    token_set = _token_set(store, video)
    fates = token_fates(token_set)
    assignment = token_set.assignment.reshape(token_set.grid).numpy()
    sign_in(page)
    page.goto(f"/ui/#/video/{video}")
    sync_api.expect(page.locator("body")).to_have_attribute("data-ready", f"#/video/{video}")
    info, canvas = page.locator("#frame-info"), page.locator("#fig-s3")
    sync_api.expect(info).to_have_text(f"frames 1\u201364 of {total}")
    assert page.locator("#prev-frames").is_disabled()
    layout = json.loads(canvas.get_attribute("data-layout"))
    assert (layout["frameStart"], layout["frames"]) == (0, 64)
    # Bounded: the canvas holds the 64 frames of the window, not the video's 72.
    height = canvas.evaluate("c => c.height")
    assert height == _figure_height(layout, 64) < _figure_height(layout, total)
    page.locator("#question").fill(QUESTION)
    page.locator("#ask").click()
    sync_api.expect(page.locator("#answer")).to_have_attribute("data-done", "true", timeout=120_000)

    page.locator("#next-frames").click()
    sync_api.expect(info).to_have_text(f"frames 65\u2013{total} of {total}")
    assert page.locator("#next-frames").is_disabled()
    pixels, layout = _canvas_pixels(page, "#fig-s3")
    assert (layout["frameStart"], layout["frames"]) == (64, total - 64)
    assert canvas.evaluate("c => c.height") == _figure_height(layout, total - 64)
    assert not _wrong_fates(pixels, layout, fates)
    pixels, layout = _canvas_pixels(page, "#fig-s2")
    assert (layout["frameStart"], layout["frames"]) == (64, total - 64)
    assert not _wrong_kept(pixels, layout, assignment, kept_rows)

    page.locator("#prev-frames").click()
    sync_api.expect(info).to_have_text(f"frames 1\u201364 of {total}")
    assert json.loads(canvas.get_attribute("data-layout"))["frameStart"] == 0
    assert canvas.evaluate("c => c.height") == height


def test_the_console_endpoints_answer_like_the_rest_of_the_api(
    service: str, store: ConsoleStore
) -> None:
    with api(service) as client:
        thumbnail = client.get("/v1/videos/consoleours01/thumbnail")
        layout = client.get("/v1/videos/consoleours01/tokens")
        failed = client.get(f"/v1/videos/{store.failed}/tokens")
        unknown = client.get("/v1/videos/0123456789abcdef/thumbnail")
        runs = client.get("/v1/runs", params={"limit": 0})
        listing = client.get("/v1/videos", params={"search": "consolevzip"})
    assert thumbnail.headers["content-type"] == "image/jpeg"
    strip = Image.open(BytesIO(thumbnail.content))
    assert strip.width == 4 * round(strip.height * 64 / 48)  # the 4 sampled 64x48 frames
    view = layout.json()
    assert view["grid"] == [4, 3, 3] and len(view["assignment"]) == 36
    assert "tokens" not in view  # no token values leave the service this way
    assert failed.status_code == 409 and failed.json()["error"]["code"] == "video_failed"
    assert unknown.status_code == 404 and runs.status_code == 400
    assert [v["video_id"] for v in listing.json()["data"]] == ["consolevzip02"]
