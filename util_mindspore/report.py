"""report.html: one self-contained page for a prediction run, opened from disk with no server and no network.

Summary, class distribution, confusion matrix and metrics when labels are known, and a gallery sorted by
confidence (a small script filters it by class and flips the order). Thumbnails are embedded; heat maps are
linked beside the report (relative paths), so the page stays small for large runs.
"""
import base64
import dataclasses
import datetime
import html
import io
import os
from typing import Optional

import numpy as np
from PIL import Image

from util_mindspore.atomic_files import atomic_write
from util_mindspore.metrics import compute_metrics

THUMBNAIL_PX = 192


@dataclasses.dataclass
class ReportRow:
    name: str
    path: str
    probs: Optional[np.ndarray]  # None for an unreadable image
    label: Optional[int]
    error: Optional[str]
    heatmap: Optional[str]  # path of its heat-map PNG


def _thumbnail(path):
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    except (OSError, ValueError):
        return None


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
.bar{display:inline-block;height:12px;background:#4a7bd0}.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{width:208px;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:12px}
.card img{max-width:192px;display:block;margin:auto}.wrong{border-color:#d04a4a;background:#fff4f4}
.heat{max-width:192px}.muted{color:#777}
"""

_SCRIPT = """
const cards = Array.from(document.querySelectorAll('.card'));
const gallery = document.getElementById('gallery');
const count = document.getElementById('shown');
let descending = true;
function refresh() {
  const wanted = document.getElementById('class-filter').value;
  cards.sort((a, b) => (descending ? -1 : 1) * (a.dataset.confidence - b.dataset.confidence));
  let shown = 0;
  for (const card of cards) {
    const visible = wanted === '' || card.dataset.prediction === wanted;
    card.style.display = visible ? '' : 'none';
    shown += visible ? 1 : 0;
    gallery.appendChild(card);
  }
  count.textContent = 'showing ' + shown + ' of ' + cards.length + ' images';
}
document.getElementById('class-filter').addEventListener('change', refresh);
document.getElementById('order').addEventListener('click', () => { descending = !descending; refresh(); });
refresh();
"""


def _table(header, rows):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _labelled_sections(rows, class_names):
    from sklearn.metrics import confusion_matrix

    known = [r for r in rows if r.probs is not None and r.label is not None]
    if not known:
        return ""
    labels = np.array([r.label for r in known])
    probs = np.stack([r.probs for r in known])
    matrix = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(len(class_names))))
    cells = [[f"<b>{html.escape(c)}</b>"] + [str(v) for v in matrix[i]] for i, c in enumerate(class_names)]
    metrics = compute_metrics(labels, probs, float("nan"))
    shown = [(k, f"{v:.4f}") for k, v in metrics.items() if k != "val_loss"]
    return (f"<h2>Labelled images: {len(known)}</h2><p>Rows: true class; columns: predicted class.</p>"
            + _table(["true \\ predicted"] + class_names, cells)
            + "<h2>Metrics (upstream's, as in metrics_test.csv)</h2>" + _table(["metric", "value"], shown))


def write_report(path, rows, class_names, description, max_images=500):
    """The page for `rows` (every image of the run); the gallery holds the `max_images` most confident."""
    readable = [r for r in rows if r.probs is not None]
    unreadable = [r for r in rows if r.probs is None]
    counts = np.bincount([int(np.argmax(r.probs)) for r in readable], minlength=len(class_names))
    peak = max(1, int(counts.max()) if len(counts) else 1)
    distribution = [[f"<b>{html.escape(c)}</b>", str(int(n)), f'<span class="bar" style="width:{160 * n // peak}px">'
                     f"</span>"] for c, n in zip(class_names, counts)]
    gallery_rows = sorted(readable, key=lambda r: -float(np.max(r.probs)))[:max_images]
    report_dir = os.path.dirname(os.path.abspath(path))
    cards = []
    for r in gallery_rows:
        predicted = int(np.argmax(r.probs))
        wrong = r.label is not None and r.label != predicted
        thumb = _thumbnail(r.path)
        picture = f'<img src="{thumb}" alt="{html.escape(r.name)}">' if thumb else '<p class="muted">no preview</p>'
        heat = ""
        if r.heatmap:
            link = html.escape(os.path.relpath(r.heatmap, report_dir))
            heat = f'<a href="{link}"><img class="heat" src="{link}" loading="lazy" alt="heat map"></a>'
        probs = "<br>".join(f"{html.escape(c)}: {p:.3f}" for c, p in zip(class_names, r.probs))
        truth = "" if r.label is None else f"<br>true: {html.escape(class_names[r.label])}"
        cards.append(f'<div class="card{" wrong" if wrong else ""}" data-confidence="{float(np.max(r.probs)):.6f}" '
                     f'data-prediction="{html.escape(class_names[predicted])}">{picture}{heat}'
                     f"<b>{html.escape(class_names[predicted])}</b> ({float(np.max(r.probs)):.3f}){truth}"
                     f'<br><span class="muted">{html.escape(r.name)}</span><br>{probs}</div>')
    options = "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in class_names)
    skipped = ""
    if unreadable:
        items = "".join(f"<li>{html.escape(r.name)}: {html.escape(r.error or '')}</li>" for r in unreadable[:50])
        more = f"<li>... {len(unreadable) - 50} more</li>" if len(unreadable) > 50 else ""
        skipped = f"<h2>Unreadable images: {len(unreadable)}</h2><ul>{items}{more}</ul>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RETFound predictions</title><style>{_STYLE}</style></head>
<body>
<h1>RETFound predictions</h1>
<p id="summary">{len(rows)} images, {len(readable)} predicted, {len(unreadable)} unreadable.
Model: {html.escape(description)}. Written {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}.</p>
<h2>Predicted classes</h2>{_table(["class", "images", ""], distribution)}
{_labelled_sections(rows, class_names)}
{skipped}
<h2>Gallery, by confidence</h2>
<p>Class: <select id="class-filter"><option value="">all</option>{options}</select>
<button id="order">reverse order</button> <span id="shown"></span>
{f'(the {max_images} most confident of {len(readable)})' if len(readable) > max_images else ''}</p>
<div class="gallery" id="gallery">{"".join(cards)}</div>
<script>{_SCRIPT}</script>
</body></html>
"""
    with atomic_write(path, encoding="utf-8") as fh:
        fh.write(page)
