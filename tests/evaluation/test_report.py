"""report.html as a browser shows it: headless Chromium (Debian's package) renders the page the prediction
script wrote, its script runs (sorting, the class and misclassified filters), and the heat maps it links are there."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import predict_mindspore
from tests.conftest import require
from tests.helpers import TINY, make_dataset
from util_mindspore.evaluation.report import per_class_rates

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path, *args):
    profile = tmp_path / "chromium-profile"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_renders_in_headless_chromium_with_its_filters_legend_and_statistics(tmp_path):
    require(CHROMIUM, "Chromium (apt-get install chromium)")
    if os.environ.get("RETFOUND_REQUIRE_BROWSER") == "1":
        assert CHROMIUM
    pytest.importorskip("torch")
    from util_mindspore.reference import checkpoint_layouts as layouts
    pth = str(tmp_path / "checkpoint-best.pth")
    layouts.upstream_best(pth, "vit_tiny_patch16", img_size=32, depth=2, model=TINY)
    data = make_dataset(tmp_path / "data", classes=("class_0", "class_1", "class_2"), per_split={"test": 2})
    (tmp_path / "data" / "test" / "class_0" / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert predict_mindspore.run(["--resume", pth, "--data_path", os.path.join(data, "test"), "--output_dir", str(out),
                                  "--report", "--heatmaps", str(out / "heatmaps"), "--batch_size", "4"]) == 0
    report = out / "report.html"
    dom = chromium(tmp_path, "--dump-dom", report.as_uri())
    assert "showing 6 of 6 images" in dom  # written by the page's script: it ran
    assert "7 images, 6 predicted, 1 unreadable" in dom and "bad.png" in dom
    assert "For research use only" in dom and "Reading the heat maps" in dom and "Grad-CAM" in dom
    assert "Labelled images: 6" in dom and "true \\ predicted" in dom and "95% CI" in dom
    assert "Sensitivity and specificity per class" in dom
    wrong = dom.count('data-wrong="1"')
    errors_dom = chromium(tmp_path, "--dump-dom", report.as_uri() + "#errors")
    assert f"showing {wrong} of 6 images" in errors_dom and f"misclassified only ({wrong})" in errors_dom
    heat_links = re.findall(r'class="heat" src="([^"]+)"', dom)
    assert len(heat_links) == 6 and all((out / link).is_file() for link in heat_links)
    assert dom.count('src="data:image/jpeg;base64,') == 6  # thumbnails embedded: no server, no network
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", "--hide-scrollbars", report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1400, 1200) and pixels.std() > 10  # a page was drawn, not a blank one
    if os.environ.get("RETFOUND_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["RETFOUND_KEEP_SCREENSHOT"])


def test_sensitivity_and_specificity_per_class_are_one_vs_rest():
    matrix = np.array([[5, 1, 0], [2, 6, 2], [0, 0, 4]])  # rows: true class
    sensitivity, specificity = per_class_rates(matrix)
    np.testing.assert_allclose(sensitivity, [5 / 6, 6 / 10, 4 / 4])
    np.testing.assert_allclose(specificity, [(6 + 2 + 0 + 4) / 14, (5 + 0 + 0 + 4) / 10, (5 + 1 + 2 + 6) / 16])
