"""The Space app: its callback on a real photo, the methods it offers, its metadata, the card's link to it, and the
page itself served by gradio and driven in a headless Chromium.

    python tests/test_space.py docs/space_screenshot.png   # redraws the README's screenshots (EfficientNet-Lite0):
                                                           # that one and docs/space_error_screenshot.png beside it
"""

import contextlib
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from huggingface_hub import ModelCard, SpaceCard
from PIL import Image

from hf_dualsig import DualSigmoidForImageClassification, explain
from hf_dualsig.cam import CAM_METHODS
from hf_dualsig.hub import build_card, publish
from hf_dualsig.pipeline_dualsig import supported_methods
from hf_dualsig.zoo import tiny_classifier

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "model_cards" / "space"
CHELSEA = APP_DIR / "examples" / "chelsea.jpg"
COFFEE = APP_DIR / "examples" / "coffee.jpg"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MISSING = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
needs_browser = pytest.mark.skipif(
    bool(MISSING) or not os.path.exists(CHROMIUM),
    reason=f"the browser test needs gradio and playwright (pip install -e '.[space]'; missing: {MISSING or 'none'}) "
    f"and Debian's chromium at {CHROMIUM} (apt-get install chromium){'' if os.path.exists(CHROMIUM) else ': absent'}",
)


def load_app():
    sys.path.insert(0, str(APP_DIR))
    try:
        import app
    finally:
        sys.path.remove(str(APP_DIR))
    return app


def stage_tiny(stage_dir: Path, num_labels: int = 8, family: str = "resnet") -> Path:
    """A tiny dual checkpoint of one family (`zoo.tiny_classifier`; untrained branch) staged as for the Hub."""
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier(family, num_labels=num_labels))
    processor = T.ViTImageProcessorPil(size={"height": 32, "width": 32})
    publish(dual, processor, "someone/tiny", str(stage_dir), dry_run=True)
    return stage_dir


def stage_lite0(stage_dir: Path) -> Path:
    """The ImageNet EfficientNet-Lite0 (converted offline) with a branch cloned from its head, staged."""
    from hf_dualsig.convert_efficientnet_lite import convert_efficientnet_lite0

    classifier, processor = convert_efficientnet_lite0()
    dual = DualSigmoidForImageClassification.from_classifier(classifier, config_kwargs={"sigmoid_head_init": "clone"})
    publish(dual, processor, "someone/lite0-dualsig", str(stage_dir), dry_run=True)
    return stage_dir


# --- the callback as a function (no gradio needed) ---


def test_space_callback_on_a_real_photo(tmp_path):
    import skimage.data

    app = load_app()
    stage = str(stage_lite0(tmp_path / "stage"))
    photo = Image.fromarray(skimage.data.chelsea())
    softmax, sigmoid, softmax_top, sigmoid_top, summary = app.explain_image(photo, "gradcam", "", model_id=stage)
    assert softmax.size == sigmoid.size == photo.size
    assert "prediction: Egyptian cat" in summary and "explained class: Egyptian cat" in summary
    assert np.asarray(softmax).std() > 0 and not np.array_equal(np.asarray(softmax), np.asarray(photo))
    assert not np.array_equal(np.asarray(softmax), np.asarray(sigmoid))
    assert len(softmax_top) == len(sigmoid_top) == 5
    assert max(softmax_top, key=softmax_top.get) == "Egyptian cat" and sum(softmax_top.values()) < 1
    assert all(0 < p < 1 for p in sigmoid_top.values())
    _, _, _, _, by_name = app.explain_image(photo, "cam", "TABBY", model_id=stage)  # any case
    assert "explained class: tabby (id 281)" in by_name
    _, _, _, _, by_id = app.explain_image(photo, "cam", "281", model_id=stage)
    assert "explained class: tabby (id 281)" in by_id
    for target, message in (("zebraa", "unknown class name 'zebraa'"), ("1000", r"targets must lie in \[0, 1000\)")):
        with pytest.raises(ValueError, match=message):
            app.explain_image(photo, "gradcam", target, model_id=stage)
    with pytest.raises(ValueError, match="no image given"):
        app.explain_image(None, "gradcam", "", model_id=stage)
    with pytest.raises(ValueError, match="need a ViT-family model"):
        app.explain_image(photo, "rollout", "", model_id=stage)
    names = app.class_names(app.cam_pipeline(stage).model.config)  # ImageNet repeats two labels
    assert names[134] == "crane (134)" and names[517] == "crane (517)" and names[281] == "tabby"


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_supported_methods_are_exactly_the_ones_the_engine_runs(family):
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier(family, num_labels=3))
    offered = supported_methods(dual)
    assert offered == [m for m in CAM_METHODS if family == "vit" or m not in ("rollout", "tscam")]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method in CAM_METHODS:
        if method in offered:
            assert explain(dual, x, methods=[method], heads=["sigmoid"])[(method, "sigmoid")].shape == (1, 32, 32)
        else:
            with pytest.raises(ValueError, match="need a ViT-family model"):
                explain(dual, x, methods=[method], heads=["sigmoid"])


def test_space_readme_is_complete_gradio_space_metadata():
    card = SpaceCard.load(APP_DIR / "README.md")
    data = card.data
    assert data.sdk == "gradio" and (APP_DIR / data.app_file).is_file()
    assert data.title and data.emoji and data.colorFrom and data.colorTo and data.license
    assert 0 < len(data.short_description) <= 60  # the Hub's limit
    assert data.models and all(len(m.split("/")) == 2 for m in data.models)
    if importlib.util.find_spec("gradio") is not None:
        import gradio

        assert data.sdk_version == gradio.__version__, "update sdk_version in model_cards/space/README.md"
    assert all(path.is_file() for path in load_app().EXAMPLES)


def test_card_links_the_space_given_at_staging(tmp_path):
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier("resnet", num_labels=3))
    dual.save_pretrained(tmp_path / "ckpt")
    T.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "ckpt")
    spec = importlib.util.spec_from_file_location("push_to_hub", REPO / "scripts" / "push_to_hub.py")
    push_to_hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(push_to_hub)
    common = ["--checkpoint", str(tmp_path / "ckpt"), "--repo_id", "someone/tiny", "--dry_run", "--num_gallery", "0"]
    push_to_hub.main(common + ["--space_id", "someone/tiny-demo", "--stage_dir", str(tmp_path / "with")])
    push_to_hub.main(common + ["--stage_dir", str(tmp_path / "without")])
    linked = ModelCard.load(tmp_path / "with" / "README.md").text
    assert "[someone/tiny-demo](https://huggingface.co/spaces/someone/tiny-demo)" in linked
    assert "huggingface.co/spaces" not in ModelCard.load(tmp_path / "without" / "README.md").text
    with pytest.raises(ValueError, match="space_id='tiny-demo'"):
        build_card(dual, "someone/tiny", None, [], "", None, "synthetic-wsol", space_id="tiny-demo")


# --- the page in a browser ---


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(model_dir: Path, workdir: Path):
    """Run app.py as the Space does (its folder as working directory) on a free local port; yield its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "DUALSIG_MODEL": str(model_dir),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
    }
    url = f"http://127.0.0.1:{port}/"
    with open(workdir / "app.log", "w+") as log:
        server = subprocess.Popen(
            [sys.executable, "app.py"], cwd=APP_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"app.py did not come up on {url} (exit {server.poll()}):\n{log.read()[-3000:]}")
                with contextlib.suppress(OSError):
                    if urllib.request.urlopen(url, timeout=2).status == 200:
                        break
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


@contextlib.contextmanager
def browser_page(url: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector("#explain")
            yield page
        finally:
            browser.close()


def listbox(page, dropdown: str):
    """The option list of the dropdown with elem_id `dropdown` (open it first)."""
    return page.locator("#" + page.locator(f"#{dropdown} input").get_attribute("aria-controls"))


def offered_methods(page) -> list[str]:
    """The method dropdown's options, in order (the dropdown is closed and left unfocused afterwards)."""
    page.click("#method input")
    offered = [text.split("\n")[-1] for text in listbox(page, "method").locator("li").all_inner_texts()]
    page.locator("#method input").press("Escape")
    page.locator("#method input").blur()  # a click on the still-focused input would not open the list again
    return offered


def pick(page, dropdown: str, option: str) -> None:
    """Choose `option` from the dropdown's list, as a user does with the mouse."""
    page.locator(f"#{dropdown} input").click()
    listbox(page, dropdown).locator("li", has_text=option).click()


def upload(page, path: Path) -> None:
    page.set_input_files("#image input[type=file]", str(path))
    page.wait_for_selector("#image img")


def set_target(page, text: str) -> None:
    box = page.locator("#target input")
    box.fill(text)
    box.press("Enter")


def overlay_pngs(page) -> list[bytes]:
    sources = [page.locator(f"#{name}-map img").get_attribute("src") for name in ("softmax", "sigmoid")]
    return [page.request.get(src).body() for src in sources]


def top_classes(page, head: str) -> list[str]:
    return [t.split("\n")[0] for t in page.locator(f"#{head}-top [data-testid$='-confidence-set']").all_inner_texts()]


def expect_results(page, explained: str) -> None:
    """Wait for a run that explains `explained` (a summary fragment) and check every output is there."""
    from playwright.sync_api import expect

    expect(page.locator("#summary")).to_contain_text(explained)
    for head in ("softmax", "sigmoid"):
        expect(page.locator(f"#{head}-map img")).to_have_count(1)
        expect(page.locator(f"#{head}-top [data-testid$='-confidence-set']")).to_have_count(5)


def expect_error(page, reason: str) -> None:
    """The reason shows in the page and every output of the previous run is cleared."""
    from playwright.sync_api import expect

    expect(page.get_by_text(reason).first).to_be_visible()
    for head in ("softmax", "sigmoid"):
        expect(page.locator(f"#{head}-map img")).to_have_count(0)
        expect(page.locator(f"#{head}-top [data-testid$='-confidence-set']")).to_have_count(0)
    expect(page.locator("#summary")).not_to_contain_text("explained class")


@needs_browser
def test_the_page_explains_reports_errors_and_clears_stale_results(tmp_path):
    model_dir = stage_tiny(tmp_path / "tiny", num_labels=8)
    names = {f"class_{i}" for i in range(8)}
    with serve_app(model_dir, tmp_path) as url, browser_page(url) as page:
        assert "never trained" in page.inner_text("body")  # from_classifier's branch is untrained
        assert offered_methods(page) == [m for m in CAM_METHODS if m not in ("rollout", "tscam")]  # no attentions

        upload(page, CHELSEA)
        page.click("#explain")
        expect_results(page, "prediction: class_")
        softmax_png, sigmoid_png = overlay_pngs(page)
        assert softmax_png.startswith(b"\x89PNG") and sigmoid_png.startswith(b"\x89PNG")  # PNG downloads
        softmax_map, sigmoid_map = (
            np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in overlay_pngs(page)
        )
        assert softmax_map.shape == sigmoid_map.shape == np.asarray(Image.open(CHELSEA)).shape
        assert not np.array_equal(softmax_map, sigmoid_map)
        softmax_top, sigmoid_top = top_classes(page, "softmax"), top_classes(page, "sigmoid")
        assert set(softmax_top) <= names and set(sigmoid_top) <= names and len(set(softmax_top)) == 5
        summary = page.inner_text("#summary")
        assert f"prediction: {softmax_top[0]}; explained class: {softmax_top[0]}" in summary
        assert "softmax p = " in summary and "sigmoid p = " in summary

        set_target(page, "zebra")
        page.click("#explain")
        expect_error(page, "unknown class name 'zebra'")

        set_target(page, "CLASS_5")  # any case
        page.click("#explain")
        expect_results(page, "explained class: class_5 (id 5)")

        set_target(page, "99")
        page.click("#explain")
        expect_error(page, "targets must lie in [0, 8)")

        pick(page, "target", "class_3")
        page.click("#explain")
        expect_results(page, "explained class: class_3 (id 3)")

        page.click("#image button[aria-label='Remove Image']")
        page.click("#explain")
        expect_error(page, "no image given")

        upload(page, COFFEE)
        set_target(page, "prediction")
        page.click("#explain")
        expect_results(page, "prediction: class_")
        assert np.asarray(Image.open(io.BytesIO(overlay_pngs(page)[0]))).shape == np.asarray(Image.open(COFFEE)).shape


@needs_browser
def test_the_page_offers_and_runs_attention_methods_for_a_vit(tmp_path):
    model_dir = stage_tiny(tmp_path / "tiny-vit", num_labels=8, family="vit")
    app = load_app()
    with serve_app(model_dir, tmp_path) as url, browser_page(url) as page:
        # what the engine runs for this checkpoint, which for a ViT is every method, rollout and tscam included
        assert offered_methods(page) == app.cam_pipeline(str(model_dir)).supported_methods() == list(CAM_METHODS)
        pick(page, "method", "rollout")
        upload(page, CHELSEA)
        page.click("#explain")
        expect_results(page, "prediction: class_")
        # the very overlays and summary of a rollout run (not of the default gradcam), for both heads
        photo = Image.open(CHELSEA)
        softmax, sigmoid, _, _, summary = app.explain_image(photo, "rollout", "", model_id=str(model_dir))
        for png, want in zip(overlay_pngs(page), (softmax, sigmoid), strict=True):
            got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            assert got.shape == np.asarray(photo).shape
            np.testing.assert_array_equal(got, np.asarray(want.convert("RGB")))
        assert page.inner_text("#summary") == summary


def save_screenshot(page, path: Path) -> None:
    """The viewport down to the examples, as a 256-colour dithered PNG (a fraction of a true-colour one's size)."""
    page.mouse.move(0, 0)  # no hover highlight
    viewport = page.viewport_size
    examples_top = page.get_by_text("Examples", exact=True).first.bounding_box()["y"]
    clip = {"x": 0, "y": 0, "width": viewport["width"], "height": min(viewport["height"], int(examples_top) - 8)}
    shot = Image.open(io.BytesIO(page.screenshot(clip=clip, animations="disabled"))).convert("RGB")
    shot.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def screenshot(output: Path, error_output: Path) -> None:
    """The page after a Grad-CAM run of EfficientNet-Lite0 on scikit-image's chelsea photo (`output`), then after an
    unknown class name typed as the target (`error_output`: the reason, the outputs cleared), as PNGs."""
    import tempfile

    import skimage.data
    from playwright.sync_api import expect

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray(skimage.data.chelsea()).save(tmp / "chelsea.png")
        with serve_app(stage_lite0(tmp / "efficientnet-lite0-dualsig"), tmp) as url, browser_page(url) as page:
            page.set_viewport_size({"width": 1280, "height": 1240})
            upload(page, tmp / "chelsea.png")
            page.click("#explain")
            expect_results(page, "prediction: Egyptian cat")
            save_screenshot(page, output)
            set_target(page, "unicorn")
            page.click("#explain")
            expect_error(page, "unknown class name 'unicorn'")
            expect(page.get_by_test_id("toast-body")).to_have_css("opacity", "1")  # done fading in
            save_screenshot(page, error_output)


if __name__ == "__main__":
    happy = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "space_screenshot.png")
    screenshot(happy, Path(sys.argv[2]) if len(sys.argv) > 2 else happy.with_name("space_error_screenshot.png"))
