"""`lookwhere-hf app` (`lookwhere_hf.app`), tested from outside: the page is served on a free local port and called
through its HTTP API with `gradio_client`, for every family (the shipped demo checkpoint and tiny saved LookWhere,
LookupViT and Glance-and-Focus models, two of them budgeted), and driven in headless Chromium with selenium.

What is checked: the returned predictions equal the model's own forward (and the pipeline's), pictures have their
sizes, the sliders change what they should, every kind of input a user drops works, and bad input gets the CLI's
message in the page. No timings are asserted. Needs the `app` extra (gradio, gradio_client) and, for the browser
test, Debian's `chromium` + `chromium-driver` and `selenium` (`.ci/run` installs them; the test skips, saying why,
where they are missing).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from test_day_one_flows import LABELS, budgeted, build, save  # noqa: E402
from transformers import pipeline  # noqa: E402

from lookwhere_hf import cli  # noqa: E402

gr = pytest.importorskip("gradio", reason='the app tests need gradio: pip install -e ".[app]"')
gradio_client = pytest.importorskip("gradio_client", reason='the app tests need gradio_client: pip install -e ".[app]"')
from gradio_client import Client, handle_file  # noqa: E402

from lookwhere_hf.app import (  # noqa: E402
    build_app,
    capped_thresholds,
    default_model_paths,
    example_images,
    load_app_model,
    read_image,
)

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "app_screenshot.png"
DEMO_MODEL = default_model_paths()[0]
DEMO_IMAGES = example_images()
SCORE_TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # float32 forwards of the same inputs, in the server and here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def real_photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(a) for a in (data.astronaut(), data.coffee(), data.chelsea(), data.camera(), data.rocket())]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny saved models of every family (budgeted LookWhere and Glance-and-Focus: the five photos exit at different
    rungs), as `{family: folder}`."""
    root = tmp_path_factory.mktemp("app_models")
    photos = real_photos()
    out = {}
    for family in ("lookwhere", "lookupvit", "glance_focus"):
        model = build(family, "AutoModelForImageClassification")
        if family != "lookupvit":
            budgeted(model.double(), photos)
            model.float()
        out[family] = save(model, root / family)
    return out


@pytest.fixture(scope="module")
def server(folders):
    """The app with the demo checkpoint and the three tiny models, on a free port: `(client, demo)`."""
    demo = build_app([DEMO_MODEL, *(str(folder) for folder in folders.values())])
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, download_files=False)
        yield client, demo
    finally:
        demo.close()


def model_name(demo, family: str, demo_checkpoint: bool = False) -> str:
    for name, app_model in demo.app_models.items():
        if app_model.family == family and (app_model.path == DEMO_MODEL) == demo_checkpoint:
            return name
    raise KeyError(family)


def call(server, name, image, k_ratio=0.1, budgeted=True, budget=None, grid=None):
    """The `/predict` endpoint: `(predictions {label: score}, picture PIL image or None, Markdown summary)`.
    `budget=None`: the GFLOPs cap slider's maximum (every model's saved rule)."""
    client, demo = server
    if budget is None:
        budget = max(m.rung_gflops[-1] for m in demo.app_models.values() if m.rung_gflops)
    label, picture, summary = client.predict(
        name, handle_file(str(image)), k_ratio, budgeted, budget, grid, api_name="/predict"
    )
    scores = {item["label"]: item["confidence"] for item in label["confidences"]} if label else {}
    if picture is not None:
        path = picture["path"] if isinstance(picture, dict) else picture
        if not os.path.exists(path):  # download_files=False: the server's file URL
            import urllib.request

            with urllib.request.urlopen(picture["url"]) as response:
                picture = Image.open(io.BytesIO(response.read())).convert("RGB")
        else:
            picture = Image.open(path).convert("RGB")
    return scores, picture, summary


def own_scores(demo, name, image_path, **forward) -> dict:
    """The model's own forward on the processor's output: `{label: probability}`."""
    app_model = demo.app_models[name]
    inputs = app_model.processor(read_image(image_path), return_tensors="pt")
    with torch.no_grad():
        probs = app_model.model(**inputs, **forward).logits.softmax(-1)[0]
    return {app_model.config.id2label[i]: p for i, p in enumerate(probs.tolist())}


def assert_same_top(scores: dict, expected: dict) -> None:
    top = sorted(expected, key=expected.get, reverse=True)[: len(scores)]
    assert list(scores) == top
    np.testing.assert_allclose([scores[k] for k in top], [expected[k] for k in top], **SCORE_TOLERANCE)


def gflops(summary: str) -> float:
    return float(re.search(r"\| this call \| ([0-9.e+-]+)", summary).group(1))


# ------------------------------------------------------------------------------------------------ the demo model
def test_demo_checkpoint_over_http(server):
    """Every example image: the pipeline's top-5, the 1000x500 selection picture, GFLOPs and the latency line."""
    demo = server[1]
    name = model_name(demo, "lookwhere", demo_checkpoint=True)
    assert list(demo.app_models)[0] == name  # the page opens on the shipped checkpoint
    classifier = pipeline("image-classification", model=DEMO_MODEL)
    for path in DEMO_IMAGES:
        scores, picture, summary = call(server, name, path)
        expected = {r["label"]: r["score"] for r in classifier(path, top_k=5)}
        assert list(scores) == list(expected)
        np.testing.assert_allclose(list(scores.values()), list(expected.values()), **SCORE_TOLERANCE)
        assert next(iter(scores)) == Path(path).stem.split("_")[1]  # the trained checkpoint reads each digit
        assert picture.size == (1000, 500)
        assert "k = 25 of 256 patches" in summary and "full-resolution" in summary and " ms" in summary


def test_k_slider_changes_the_selection_and_the_flops(server):
    demo = server[1]
    name = model_name(demo, "lookwhere", demo_checkpoint=True)
    few, few_picture, few_summary = call(server, name, DEMO_IMAGES[0], k_ratio=0.05)
    many, many_picture, many_summary = call(server, name, DEMO_IMAGES[0], k_ratio=0.5)
    assert "k = 12 of 256" in few_summary and "k = 128 of 256" in many_summary
    assert gflops(few_summary) < gflops(many_summary)
    assert not np.array_equal(np.asarray(few_picture), np.asarray(many_picture))
    for scores, k in ((few, 12), (many, 128)):
        assert_same_top(scores, own_scores(demo, name, DEMO_IMAGES[0], k=k))


# ------------------------------------------------------------------------------------------------ tiny families
@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, photo in enumerate(real_photos()):
        paths.append(folder / f"photo_{i}.png")
        photo.save(paths[-1])
    return paths


def test_tiny_lookwhere_budgeted_and_fixed_k(server, photo_files):
    """Budgeted: the saved rule gives the model's own exits; a cap below the first focus rung stops every image at
    the glance; unticked, the k slider runs fixed k."""
    demo = server[1]
    name = model_name(demo, "lookwhere")
    app_model = demo.app_models[name]
    exits = set()
    for path in photo_files:
        scores, picture, summary = call(server, name, path)
        inputs = app_model.processor(read_image(path), return_tensors="pt")
        with torch.no_grad():
            outputs = app_model.model(**inputs)  # budgeted by default: thresholds are saved
        exit_rung = int(outputs.exit_rung[0])
        exits.add(exit_rung)
        assert f"exits at rung **{exit_rung}**" in summary
        assert_same_top(scores, {LABELS[i]: p for i, p in enumerate(outputs.logits.softmax(-1)[0].tolist())})
        assert picture.size == (1000, 500)
        assert gflops(summary) == pytest.approx(float(outputs.flops[0]) / 1e9, rel=5e-3)  # 3 digits shown
    assert len(exits) >= 2, exits
    for path in photo_files[:2]:
        _, _, summary = call(server, name, path, budget=0.0)
        assert "exits at rung **0** (glance" in summary
        scores, _, summary = call(server, name, path, budgeted=False, k_ratio=0.25)
        assert "**Fixed k**: k = 16 of 64" in summary
        assert_same_top(scores, own_scores(demo, name, path, k=16))


def test_a_model_with_a_shortest_edge_processor(folders, tmp_path):
    """A LookupViT folder whose processor resizes the shorter side without cropping (what a user's own processor may
    do): the app's input size, warm-up and predictions follow that processor (a square image, that side)."""
    from transformers import BitImageProcessor

    folder = tmp_path / "lookupvit_shortest_edge"
    shutil.copytree(folders["lookupvit"], folder)
    side = build("lookupvit", "AutoModelForImageClassification").config.image_size
    BitImageProcessor(size={"shortest_edge": side}, do_center_crop=False).save_pretrained(folder)
    app_model = load_app_model(str(folder))
    assert app_model.input_size() == (side, side)
    # the processor of a center-cropping one: its crop
    BitImageProcessor(size={"shortest_edge": side + 16}, crop_size={"height": side, "width": side}).save_pretrained(
        folder
    )
    assert load_app_model(str(folder)).input_size() == (side, side)


def test_capped_thresholds():
    assert capped_thresholds([0.5, 0.6, 0.7], [1.0, 2.0, 3.0, 4.0], None) == [0.5, 0.6, 0.7]
    assert capped_thresholds([0.5, 0.6, 0.7], [1.0, 2.0, 3.0, 4.0], 4.0) == [0.5, 0.6, 0.7]
    assert capped_thresholds([0.5, 0.6, 0.7], [1.0, 2.0, 3.0, 4.0], 2.5) == [0.5, 0.0, 0.0]
    assert capped_thresholds([0.5, 0.6, 0.7], [1.0, 2.0, 3.0, 4.0], 0.0) == [0.0, 0.0, 0.0]


def test_tiny_lookupvit_every_grid(server, photo_files):
    demo = server[1]
    name = model_name(demo, "lookupvit")
    costs = []
    for grid in ("2x2", "4x4"):
        scores, picture, summary = call(server, name, photo_files[0], grid=grid)
        assert f"**Compressed grid {grid}**" in summary
        side = int(grid[0])
        assert_same_top(scores, own_scores(demo, name, photo_files[0], compressed_grid=(side, side)))
        assert picture.size == (500, 500)
        costs.append(gflops(summary))
    assert costs[0] < costs[1]
    _, picture, summary = call(server, name, photo_files[0], grid="9x9")  # larger than the 8x8 token grid
    assert picture is None and summary.startswith("**Error:**") and "larger than the lookup token grid" in summary


def test_tiny_glance_focus_steps(server, photo_files):
    demo = server[1]
    name = model_name(demo, "glance_focus")
    app_model = demo.app_models[name]
    exits = set()
    for path in photo_files:
        scores, picture, summary = call(server, name, path)
        inputs = app_model.processor(read_image(path), return_tensors="pt")
        with torch.no_grad():
            outputs = app_model.model(**inputs)
        exit_rung = int(outputs.exit_rung[0])
        exits.add(exit_rung)
        assert f"exits after step **{exit_rung}** of steps 0-2" in summary
        assert_same_top(scores, {LABELS[i]: p for i, p in enumerate(outputs.logits.softmax(-1)[0].tolist())})
        assert picture.size == (3 * 300, 350)  # glance + 2 focus steps, 3 x 3.5 inches at 100 dpi
        for x0, y0, x1, y1 in outputs.crop_boxes[0].tolist()[:exit_rung]:
            assert f"crop ({x0}, {y0})-({x1}, {y1})" in summary
    assert len(exits) >= 2, exits
    scores, _, summary = call(server, name, photo_files[0], budgeted=False)  # every step
    assert "**Every step** (no early exit): exits after step **2**" in summary
    assert_same_top(scores, own_scores(demo, name, photo_files[0], budget=False))


# ------------------------------------------------------------------------------------------------ what users drop
def cli_message(path) -> str:
    """What `lookwhere-hf predict FILE` prints for a bad file, without its `lookwhere-hf predict: error: ` prefix."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert cli.main(["predict", str(path)]) == 2
    return stderr.getvalue().strip().split("error: ", 1)[1]


def test_any_image_a_user_drops(server, tmp_path):
    """Grayscale, RGBA, 16-bit, palette and a large photo are classified as the processor sees them."""
    demo = server[1]
    name = model_name(demo, "lookwhere", demo_checkpoint=True)
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(DEMO_IMAGES[0]).convert("RGB"))
    gray = base.mean(-1).round().astype(np.uint8)
    files = {
        "gray.png": Image.fromarray(gray),
        "rgba.png": Image.fromarray(np.dstack([base, rng.integers(0, 256, base.shape[:2], dtype=np.uint8)])),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "palette.gif": Image.fromarray(base).convert("P"),
        "large.jpg": Image.fromarray(base).resize((2400, 1800)),
        "small.png": Image.fromarray(base).resize((20, 30)),
    }
    for file_name, image in files.items():
        path = tmp_path / file_name
        image.save(path)
        scores, picture, summary = call(server, name, path)
        assert len(scores) == 5 and picture.size == (1000, 500), file_name
        assert_same_top(scores, own_scores(demo, name, path))
        assert summary.startswith(f"Input: {image.width}x{image.height} px")
    # 16-bit: scaled by 65535 as the processor does, so the same prediction as the 8-bit picture
    eight, _, _ = call(server, name, tmp_path / "gray.png")
    sixteen, _, _ = call(server, name, tmp_path / "gray16.png")
    assert list(eight) == list(sixteen)
    np.testing.assert_allclose(list(eight.values()), list(sixteen.values()), rtol=1e-4)


def test_bad_input_gets_the_cli_message(server, tmp_path):
    demo = server[1]
    name = model_name(demo, "lookwhere", demo_checkpoint=True)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(DEMO_IMAGES[0]).read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (text, truncated, empty):
        scores, picture, summary = call(server, name, path)
        assert scores == {} and picture is None
        message = cli_message(path)
        # the server sees its upload copy of the file: the same message with that path
        assert summary.startswith("**Error:** cannot read ") and summary.endswith(message.split(" as an image")[1])
        assert "Traceback" not in summary


def test_oversized_image_gets_the_cli_message(server, tmp_path, monkeypatch):
    """A decompression bomb (here: over a lowered pixel limit, in this process where the server runs) is refused
    with the CLI's message, before anything decodes it."""
    name = model_name(server[1], "lookwhere", demo_checkpoint=True)
    path = tmp_path / "bomb.png"
    Image.new("RGB", (200, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 20000 pixels > 2 x the limit: PIL refuses to open it
    scores, picture, summary = call(server, name, path)
    message = cli_message(path)
    assert message.startswith(f"{path} is too large to open safely")
    assert scores == {} and picture is None
    assert summary.startswith("**Error:** ") and "is too large to open safely" in summary
    assert summary.endswith(message.split("pixels", 1)[1])


def test_cli_and_space_entry_points(tmp_path, capsys):
    """`lookwhere-hf app` refuses bad folders with the CLI's one-line errors; the root `app.py` (a Space's entry)
    builds the page from `LOOKWHERE_APP_MODELS` without serving it."""
    assert cli.main(["app", "--model", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"lookwhere-hf app: error: model folder not found: {tmp_path / 'missing'}"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["app", "--port", "0"])
    assert exit_info.value.code == 2 and "--port: must be a positive integer" in capsys.readouterr().err
    import runpy

    os.environ["LOOKWHERE_APP_MODELS"] = DEMO_MODEL
    try:
        space = runpy.run_path(str(REPO / "app.py"))
    finally:
        del os.environ["LOOKWHERE_APP_MODELS"]
    assert list(space["demo"].app_models) == ["LookWhere demo checkpoint (Sparse Digits)"]


# ------------------------------------------------------------------------------------------------ a real browser
def chromium_or_skip() -> tuple[str, str]:
    """Paths of a Chromium binary and its chromedriver, or skip saying what is missing."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "no Chromium found (needs Debian's `chromium` and `chromium-driver`: apt-get install -y chromium "
            "chromium-driver; .ci/run installs them where apt-get runs as root)"
        )
    return browser, driver


@contextlib.contextmanager
def cli_server(*args):
    """`lookwhere-hf app --port N ...` in a subprocess; yields its URL once it answers."""
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "lookwhere_hf.cli", "app", "--port", str(port), *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        import urllib.request

        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"`lookwhere-hf app` exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("`lookwhere-hf app` did not answer within 180 s")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def image_bytes(src: str) -> np.ndarray:
    import urllib.request

    with urllib.request.urlopen(src) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.mark.slow
def test_browser_upload_and_k_slider(tmp_path):
    """Headless Chromium on the page `lookwhere-hf app` serves: upload a digit, read the predictions, drag the k
    slider, and the selection picture changes with it. Saves a screenshot (`LOOKWHERE_UPDATE_SCREENSHOT=1` also
    writes it to docs/app_screenshot.png, the README's picture)."""
    browser, driver_path = chromium_or_skip()
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser test needs selenium: pip install selenium"
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1250"):
        options.add_argument(flag)
    image = next(p for p in DEMO_IMAGES if "digit_3" in p)
    with cli_server() as url:
        driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url)

            def picture_src(_=None):
                found = driver.find_elements(By.CSS_SELECTOR, "#picture img")
                return found[0].get_attribute("src") if found and found[0].get_attribute("src") else None

            def summary_text():
                return driver.find_element(By.ID, "summary").text

            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
            driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(image)
            wait.until(lambda d: picture_src() and "k = 25 of 256" in summary_text())
            first_src, first_summary = picture_src(), summary_text()
            assert "LookWhere demo checkpoint" in first_summary and "GFLOPs" in first_summary
            labels = driver.find_element(By.ID, "predictions").text
            assert labels.split("\n")[:2] == ["Top predictions", "3"], labels  # the digit, as the pipeline says

            slider = driver.find_element(By.CSS_SELECTOR, "#k_ratio input[type=range]")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
            width = slider.size["width"]
            drag = webdriver.ActionChains(driver).move_to_element_with_offset(slider, -width // 2 + 2, 0)
            drag.click_and_hold().move_by_offset(int(width * 0.3), 0).release().perform()
            wait.until(lambda d: picture_src() != first_src and "k = 25 of 256" not in summary_text())
            k = int(re.search(r"k = (\d+) of 256", summary_text()).group(1))
            assert k > 25, summary_text()
            assert not np.array_equal(image_bytes(first_src), image_bytes(picture_src()))

            driver.execute_script("window.scrollTo(0, 0);")
            shot = tmp_path / "app_screenshot.png"
            assert driver.save_screenshot(str(shot))
            assert Image.open(shot).size[0] >= 1000
            if os.environ.get("LOOKWHERE_UPDATE_SCREENSHOT"):
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
        finally:
            driver.quit()
