"""The demo page: its files over HTTP from the real server, then the page in a real browser.

The browser tests drive the system's Chromium (Debian's ``chromium`` at /usr/bin/chromium)
with Playwright; no browser is downloaded. They skip, saying why, where either is missing,
unless ``REQUIRE_BROWSER=1`` (for CI), which makes that a failure.
``DEMO_SCREENSHOT=docs/demo.png`` saves the page after a real prediction of an
out-of-distribution sample, with its held-out figures.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import numpy as np
import pytest
from PIL import Image

from convlstm_card import sha256_of
from tests.service.conftest import COMMITTED_MODEL, REPO, RunningServer, run_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, FilePayload, Page, Response

WEB = REPO / "service" / "web"
INDEX = json.loads((WEB / "samples" / "samples.json").read_text())
SAMPLES = INDEX["samples"]
FIRST = SAMPLES[0]["name"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# A page load is some 30 requests; their log lines add nothing to these tests.
QUIET = ("--log-level", "warning")
# Every wait in the browser is bounded. A prediction takes about 0.3 s per horizon step on
# two idle cores; PREDICT_MS leaves room for a loaded machine.
WAIT_MS = 15_000
PREDICT_MS = 60_000


def sample_files(name: str) -> list[str]:
    sample = next(s for s in SAMPLES if s["name"] == name)
    return [f"input_{i:02d}.png" for i in range(sample["input_frames"])] + [
        f"truth_{i:02d}.png" for i in range(sample["truth_frames"])
    ]


def read_png(raw: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(raw))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """The committed ConvLSTM served by the real process, logging warnings only."""
    with run_server(COMMITTED_MODEL, *QUIET) as running:
        yield running


# ---- over HTTP ------------------------------------------------------------------------


def test_root_serves_the_page(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert client.head("/").status_code == 200
    for needle in ('src="web/app.js"', 'href="web/app.css"', 'id="api-key"', 'id="error"'):
        assert needle in r.text


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/web/app.js", "javascript"),
        ("/web/scores.js", "javascript"),
        ("/web/app.css", "text/css"),
        ("/web/index.html", "html"),
    ],
)
def test_page_files_are_served(client: httpx.Client, path: str, media: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert media in r.headers["content-type"]
    assert r.content == (WEB / path.removeprefix("/web/")).read_bytes()


def test_samples_are_served_as_small_40x40_pngs(client: httpx.Client) -> None:
    index = client.get("/web/samples/samples.json").json()
    sets = [s["set"] for s in index["samples"]]
    # Both sets, each named once in "sets" with its label, and 3-4 samples of each.
    assert set(index["sets"]) == set(sets) == {"test", "ood"}
    assert all(3 <= sets.count(name) <= 4 for name in index["sets"])
    for sample in index["samples"]:
        assert (sample["input_frames"], sample["truth_frames"]) == (15, 8)
        assert sample["description"] and sample["title"]
        for file in sample_files(sample["name"]):
            r = client.get(f"/web/samples/{sample['name']}/{file}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert len(r.content) < 2048, (sample["name"], file, len(r.content))
            assert read_png(r.content).shape == (40, 40, 3)


def test_missing_and_outside_files_get_404(client: httpx.Client) -> None:
    outside = ("/web/%2e%2e/api/web.py", "/web/..%2Fapi%2Fweb.py", "/web/%2e%2e/%2e%2e/README.md")
    for path in ("/web/nothing.js", "/web/samples/nope/input_00.png", "/web/", *outside):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["type"] == "not_found"


def sample_pixels(name: str) -> np.ndarray:
    folder = WEB / "samples" / name
    return np.stack([read_png((folder / f).read_bytes()) for f in sample_files(name)])


def sample_index(name: str) -> int:
    return int(name.split("-")[1])


def test_samples_are_the_test_split_and_the_ood_set() -> None:
    from model_export.frames import data, scenes
    from model_export.frames.ood import OOD, OOD_SEED

    test = [s for s in SAMPLES if s["set"] == "test"]
    ood = [s for s in SAMPLES if s["set"] == "ood"]
    n = max(sample_index(s["name"]) for s in test) + 1
    sequences = data.generate(n, seed=data.SPLIT_SEEDS["test"], split="test", frames=23)
    for sample in test:
        expected = np.rint(sequences[sample_index(sample["name"])] * 255).astype(np.uint8)
        np.testing.assert_array_equal(sample_pixels(sample["name"]), expected)
    n = max(sample_index(s["name"]) for s in ood) + 1
    sequences = scenes.render(OOD, n, seed=OOD_SEED, frames=23)
    drawn = scenes.draw_scenes(OOD, n, seed=OOD_SEED, frames=23)
    for sample in ood:
        i = sample_index(sample["name"])
        expected = np.rint(sequences[i] * 255).astype(np.uint8)
        np.testing.assert_array_equal(sample_pixels(sample["name"]), expected)
        assert sample["description"] == drawn[i].describe()


def test_samples_carry_the_committed_cards_figures() -> None:
    committed = json.loads((WEB / "samples" / "samples.json").read_text())["committed_model"]
    card = json.loads(COMMITTED_MODEL.with_suffix(".json").read_text())
    assert committed["sha256"] == card["sha256"] == sha256_of(COMMITTED_MODEL)
    for name, evaluation in (("test", card["evaluation"]), ("ood", card["evaluation"]["ood"])):
        figures, model = committed["figures"][name], evaluation["metrics"]["convlstm"]
        assert figures["sequences"] == evaluation["sequences"]
        assert figures["mse_vs_copy_last"] == model["mse_vs_copy_last"]
        assert figures["ssim"] == model["ssim"]
        steps = [step["mse_vs_copy_last"] for step in model["fed_back"]]
        assert figures["fed_back_mse_vs_copy_last"] == steps


def test_package_data_ships_every_web_file() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    shipped = {p for pattern in patterns for p in (REPO / "service").glob(pattern) if p.is_file()}
    assert shipped == {p for p in WEB.rglob("*") if p.is_file()}


# ---- in the browser -------------------------------------------------------------------


def no_browser(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        no_browser(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        no_browser("playwright is not installed (pip install -e '.[dev]')")
    sync_api.expect.set_options(timeout=WAIT_MS)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=WAIT_MS
        )
        yield chromium
        chromium.close()


@contextmanager
def open_page(browser: Browser, url: str) -> Iterator[Page]:
    """The page loaded from ``url`` in a fresh context; fails on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1180, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    try:
        page.goto(f"{url}/")
        page.wait_for_selector(f'#sample option[value="{FIRST}"]', state="attached")
        yield page
        assert not script_errors, script_errors
    finally:
        context.close()


@pytest.fixture
def page(browser: Browser, server: RunningServer) -> Iterator[Page]:
    with open_page(browser, server.url) as loaded:
        yield loaded


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def predict(page: Page, horizon: int) -> Response:
    """Press Predict; the answer to the page's request, once the page has shown it."""
    page.fill("#horizon", str(horizon))
    with page.expect_response("**/predict", timeout=PREDICT_MS) as response:
        page.click("#run")
    expect(page.locator("#busy")).to_be_hidden()
    return response.value


def natural_sizes(page: Page, selector: str) -> list[list[int]]:
    """(naturalWidth, naturalHeight) of every image, once all have loaded or failed."""
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector
    )
    sizes: list[list[int]] = page.eval_on_selector_all(
        selector, "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])"
    )
    return sizes


def shown_frames(page: Page, selector: str) -> list[np.ndarray]:
    """The pixels of data-URL images on the page."""
    sources: list[str] = page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.src)")
    return [read_png(base64.b64decode(src.split(",", 1)[1])) for src in sources]


def test_sample_prediction_shows_frames_model_and_time(page: Page, client: httpx.Client) -> None:
    name = SAMPLES[2]["name"]
    page.select_option("#sample", name)
    expect(page.locator("#inputs img")).to_have_count(15)
    response = predict(page, 3)
    assert response.status == 200
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#predicted img")).to_have_count(3)
    expect(page.locator("#truth img")).to_have_count(3)
    assert natural_sizes(page, "#inputs img, #truth img, #predicted img") == [[40, 40]] * 21

    # The page sent the sample's files in order, and shows what the API answered.
    sent = response.request.post_data_json
    assert sent is not None
    folder = WEB / "samples" / name
    assert sent["horizon"] == 3
    assert [base64.b64decode(f) for f in sent["frames"]] == [
        (folder / f"input_{i:02d}.png").read_bytes() for i in range(15)
    ]
    answer = response.json()
    api_frames = [read_png(base64.b64decode(f)) for f in answer["frames"]]
    for shown, expected in zip(shown_frames(page, "#predicted img"), api_frames, strict=True):
        np.testing.assert_array_equal(shown, expected)

    expect(page.locator("#info-model")).to_have_text(f"convlstm {answer['model_version']}")
    expect(page.locator("#info-provider")).to_have_text(client.get("/readyz").json()["provider"])
    expect(page.locator("#info-inference")).to_have_text(
        re.compile(r"^\d+\.\d ms in the model \(3 model runs\)$")
    )
    expect(page.locator("#service-status")).to_contain_text("Ready: convlstm")

    wait_for_predicted_frames_in_the_animation(page)


def wait_for_predicted_frames_in_the_animation(page: Page) -> None:
    """The animation reaches the predicted frames and draws them."""
    page.wait_for_function(
        """() => {
            const c = document.getElementById('movie-predicted');
            const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return document.getElementById('movie-step').textContent.includes('predicted')
                && pixels.some((v, i) => i % 4 !== 3 && v > 40);
        }"""
    )


def shown_scores(page: Page) -> list[list[str]]:
    """The cells of the held-out figures' table, row by row."""
    rows: list[list[str]] = page.eval_on_selector_all(
        "#scores-live tbody tr", "trs => trs.map(tr => [...tr.cells].map(c => c.textContent))"
    )
    return rows


def as_unit(png: bytes) -> np.ndarray:
    return read_png(png) / 255.0


def test_ood_sample_shows_figures_python_computes_from_the_same_frames(page: Page) -> None:
    groups = page.eval_on_selector_all(
        "#sample optgroup", "gs => gs.map(g => [g.label, [...g.children].map(o => o.value)])"
    )
    assert groups == [
        [INDEX["sets"][name]["label"], [s["name"] for s in SAMPLES if s["set"] == name]]
        for name in INDEX["sets"]
    ]
    sample = next(s for s in SAMPLES if s["set"] == "ood")
    page.select_option("#sample", sample["name"])
    expect(page.locator("#sample-about")).to_contain_text(sample["description"])
    response = predict(page, 3)
    assert response.status == 200
    expect(page.locator("#scores-live tbody tr")).to_have_count(3)

    # The same score from the frames the API returned, the sample's truth and last input;
    # SSIM by the function that writes the model cards' figures.
    from model_export.frames.evaluate import ssim

    folder = WEB / "samples" / sample["name"]
    last = as_unit((folder / "input_14.png").read_bytes())
    committed = INDEX["committed_model"]["figures"]["ood"]["fed_back_mse_vs_copy_last"]
    rows = shown_scores(page)
    for k, (row, frame) in enumerate(zip(rows, response.json()["frames"], strict=True)):
        truth = as_unit((folder / f"truth_{k:02d}.png").read_bytes())
        mse = float(np.mean((as_unit(base64.b64decode(frame)) - truth) ** 2))
        copy_last = float(np.mean((last - truth) ** 2))
        step, shown_mse, shown_copy, ratio, shown_ssim, shown_copy_ssim, set_ratio = row
        assert step == f"t={16 + k}"
        # Three significant digits for an MSE, two decimals for a ratio, three for an SSIM:
        # half a unit of the last digit shown.
        for shown, value in ((shown_mse, mse), (shown_copy, copy_last)):
            assert abs(float(shown) - value) <= 0.5 * 10 ** (np.floor(np.log10(value)) - 2)
        assert abs(float(ratio.rstrip("\u00d7")) - mse / copy_last) <= 0.005 + 1e-9, row
        predicted = as_unit(base64.b64decode(frame))
        for shown, (x, y) in ((shown_ssim, (predicted, truth)), (shown_copy_ssim, (last, truth))):
            assert abs(float(shown) - float(ssim(x[None], y[None])[0])) <= 0.0005 + 1e-9, row
        assert set_ratio == f"{committed[k]:.2f}\u00d7"
    figures = page.locator("#scores-set")
    expect(figures).to_contain_text(INDEX["committed_model"]["sha256"][:12])
    expect(figures).to_contain_text(f"{INDEX['sets']['ood']['label']}, 256 sequences")
    expect(page.locator("#scores-note")).to_contain_text("This sequence, 3 predicted frames")
    if os.environ.get("DEMO_SCREENSHOT"):
        wait_for_predicted_frames_in_the_animation(page)
        page.screenshot(path=REPO / os.environ["DEMO_SCREENSHOT"], full_page=True)


def upload(page: Page, files: list[tuple[str, bytes]]) -> None:
    payloads: list[FilePayload] = [
        {"name": n, "mimeType": "image/png", "buffer": b} for n, b in files
    ]
    page.set_input_files("#files", payloads)


def sample_inputs(name: str = FIRST) -> list[tuple[str, bytes]]:
    folder = WEB / "samples" / name
    return [(f"frame_{i:02d}.png", (folder / f"input_{i:02d}.png").read_bytes()) for i in range(15)]


def png_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def with_frame(index: int, raw: bytes) -> list[tuple[str, bytes]]:
    files = sample_inputs()
    files[index] = (files[index][0], raw)
    # Handed over in reverse: the page puts them in file-name order.
    return files[::-1]


# (files to upload, words the error on the page must contain); none reaches the model.
BAD_UPLOADS = {
    "text file named .png": (with_frame(3, b"hello, not a picture\n"), "frames[3]: not a PNG"),
    "3 files": (sample_inputs()[:3], "frames: expected 15 frames, got 3"),
    "32x40 frame": (with_frame(14, png_of_size(32, 40)), "frames[14]: image is 32x40"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_upload_shows_the_api_error(page: Page, case: str) -> None:
    files, words = BAD_UPLOADS[case]
    upload(page, files)
    expect(page.locator('#inputs img[src^="blob:"]')).to_have_count(len(files))
    assert predict(page, 1).status == 422
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(words)
    expect(error).to_contain_text("HTTP 422")
    expect(page.locator("#predicted img")).to_have_count(0)


def test_refused_horizon_then_a_good_run_clears_the_error(page: Page) -> None:
    upload(page, sample_inputs())
    expect(page.locator('#inputs img[src^="blob:"]')).to_have_count(15)
    assert predict(page, 9).status == 422
    expect(page.locator("#error")).to_contain_text("horizon: must be between 1 and 8, got 9")
    assert predict(page, 1).status == 200
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#predicted img")).to_have_count(1)
    expect(page.locator("#truth")).to_contain_text("No ground truth")
    expect(page.locator("#scores-note")).to_contain_text("nothing to score the prediction against")
    expect(page.locator("#scores-live")).to_be_hidden()


def test_animated_gif_is_split_into_frames(page: Page) -> None:
    folder = WEB / "samples" / FIRST
    frames = [Image.open(folder / f) for f in sample_files(FIRST)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    gif: FilePayload = {"name": "digits.gif", "mimeType": "image/gif", "buffer": buffer.getvalue()}
    page.set_input_files("#files", gif)
    expect(page.locator('#inputs img[src^="data:image/png"]')).to_have_count(15)
    # GIF colours are quantised; every frame must still be the whole frame, not a patch.
    for shown, file in zip(shown_frames(page, "#inputs img"), sample_files(FIRST), strict=False):
        original = read_png((folder / file).read_bytes()).astype(int)
        assert np.abs(shown.astype(int) - original).mean() < 2, file
    assert predict(page, 1).status == 200
    expect(page.locator("#predicted img")).to_have_count(1)
    expect(page.locator("#truth img")).to_have_count(1)


def test_api_key_header_only_when_the_field_is_filled(page: Page) -> None:
    # The key is off on this server: the page works without one, and with one it sends it.
    response = predict(page, 1)
    assert response.status == 200 and "x-api-key" not in response.request.headers
    page.fill("#api-key", "  some-key ")
    response = predict(page, 1)
    assert response.status == 200 and response.request.headers["x-api-key"] == "some-key"
    expect(page.locator("#predicted img")).to_have_count(1)


def test_api_key_on(browser: Browser) -> None:
    from service.config import Settings

    if "api_key" not in Settings.model_fields:
        pytest.skip("service.config.Settings has no api_key field yet: nothing to switch on")
    key = "demo-key-7f3a"
    with (
        run_server(COMMITTED_MODEL, *QUIET, env={"CONVLSTM_API_KEY": key}) as keyed,
        open_page(browser, keyed.url) as page,
    ):
        assert predict(page, 1).status == 401
        expect(page.locator("#error")).to_contain_text("HTTP 401")
        expect(page.locator("#error")).to_contain_text("enter it in the API key field")
        page.fill("#api-key", "wrong")
        assert predict(page, 1).status == 401
        expect(page.locator("#error")).to_contain_text("was not accepted")
        page.fill("#api-key", key)
        assert predict(page, 1).status == 200
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#predicted img")).to_have_count(1)


def test_model_picker_lists_every_served_frame_model(page: Page, client: httpx.Client) -> None:
    served = client.get("/readyz").json()["served"]
    frame_models = [m["name"] for m in served if m["predict"]]
    assert len(frame_models) >= 2  # the committed directory serves the CNN-LSTM too
    expect(page.locator("#model option")).to_have_count(len(frame_models))
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == frame_models
    assert page.eval_on_selector("#model", "s => s.value") == "convlstm"
    page.select_option("#model", "cnn_lstm")
    response = predict(page, 1)
    assert response.status == 200
    sent = response.request.post_data_json
    assert sent is not None and sent["model"] == "cnn_lstm"
    expect(page.locator("#info-model")).to_contain_text("cnn_lstm")
    # Its own figures on this sequence, but not the committed ConvLSTM's on the set.
    expect(page.locator("#scores-live tbody tr")).to_have_count(1)
    expect(page.locator("#scores-set")).to_contain_text("is another graph, so none are shown")
    assert shown_scores(page)[0][-1] == "\u2014"  # the whole-set column


def test_live_mode_streams_the_frames_over_the_websocket(page: Page, client: httpx.Client) -> None:
    page.select_option("#sample", FIRST)
    expect(page.locator("#inputs img")).to_have_count(15)
    page.click("#live")
    expect(page.locator("#live-predicted img")).to_have_count(15, timeout=PREDICT_MS)
    expect(page.locator("#live-status")).to_contain_text("Done: 15 frames streamed to convlstm")
    expect(page.locator("#error")).to_be_hidden()
    # After the 15th frame the stream predicts what /predict does from the 15 frames.
    folder = WEB / "samples" / FIRST
    frames = [
        base64.b64encode((folder / f"input_{i:02d}.png").read_bytes()).decode() for i in range(15)
    ]
    windowed = client.post("/predict", json={"frames": frames}).json()["frames"][0]
    last = shown_frames(page, "#live-predicted img")[-1]
    np.testing.assert_array_equal(last, read_png(base64.b64decode(windowed)))
    # The page closed its stream when done.
    page.wait_for_function(
        "() => fetch('metrics').then(r => r.text()).then(t => "
        '/convlstm_streams_open\\{model="convlstm"\\} 0\\.0/.test(t))'
    )
