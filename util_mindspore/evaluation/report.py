"""report.html: one self-contained page for a prediction run, opened from disk with no server and no network.

Summary (with a research-use note), class distribution, and when labels are known: the confusion matrix, upstream's
metrics with bootstrap 95% confidence intervals, and per-class sensitivity and specificity. Then a gallery sorted
by confidence, which a small script filters by class or to the misclassified images and flips; a legend says what
the heat maps show and how not to read them. Thumbnails are embedded; heat maps are linked beside the report
(relative, percent-encoded paths), so the page stays small for large runs. Every name is escaped, whatever its bytes.
"""
import base64
import dataclasses
import datetime
import html
import io
import os
import urllib.parse
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from util_mindspore.evaluation.metrics import BOOTSTRAP_RESAMPLES, bootstrap_intervals, compute_metrics
from util_mindspore.files.atomic import atomic_write
from util_mindspore.files.names import printable

THUMBNAIL_PX = 192

RESEARCH_USE = ("For research use only. These outputs come from a machine-learning model and are not a diagnosis: "
                "they have not been validated for clinical decisions on these images, and a clinician must review "
                "any finding.")

HEATMAP_LEGEND = (
    "<b>Attention rollout</b> (left overlay): where the class token's attention flows through all blocks, averaged "
    "over heads (Abnar &amp; Zuidema 2020). It shows what the model looked at, for any class, not evidence for the "
    "prediction. <b>Grad-CAM</b> (right overlay): patches whose features raise the score of the named class "
    "(gradients at the last block). Colours run from blue (0) to red (the image's own maximum), so maps are not "
    "comparable between images. Neither map is a segmentation or a lesion finding: a bright area on a wrong "
    "prediction is as bright as on a right one, and sharp edges follow the 16 x 16 px patches, not anatomy.")


@dataclasses.dataclass
class ReportRow:
    name: str
    path: str
    probs: Optional[np.ndarray]  # None for an unreadable image
    label: Optional[int]
    error: Optional[str]
    heatmap: Optional[str]  # path of its heat-map PNG


def _text(value: object) -> str:
    return html.escape(printable(str(value)))


def _thumbnail(path: str) -> Optional[str]:
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
body{font-family:system-ui,sans-serif;margin:24px;color:#222;font-size:15px}h1{font-size:24px}
h2{font-size:19px;margin-top:30px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}.bar{display:inline-block;height:12px;background:#0072B2}
.gallery{display:flex;flex-wrap:wrap;gap:14px}.card{width:224px;border:1px solid #ddd;border-radius:6px;padding:8px;
font-size:14px;line-height:1.35}.card img{max-width:208px;display:block;margin:auto}
.wrong{border-color:#D55E00;border-width:2px;background:#fff4ee}.heat{max-width:208px;margin-top:6px}
.muted{color:#555}.note{background:#fff8e1;border-left:4px solid #E69F00;padding:8px 12px;max-width:900px}
.legend{max-width:900px}.tag{color:#D55E00;font-weight:600}
"""

_SCRIPT = """
const cards = Array.from(document.querySelectorAll('.card'));
const gallery = document.getElementById('gallery');
const count = document.getElementById('shown');
let descending = true;
function refresh() {
  const wanted = document.getElementById('class-filter').value;
  const errorsOnly = document.getElementById('errors-only').checked;
  cards.sort((a, b) => (descending ? -1 : 1) * (a.dataset.confidence - b.dataset.confidence));
  let shown = 0;
  for (const card of cards) {
    const visible = (wanted === '' || card.dataset.prediction === wanted) &&
      (!errorsOnly || card.dataset.wrong === '1');
    card.style.display = visible ? '' : 'none';
    shown += visible ? 1 : 0;
    gallery.appendChild(card);
  }
  count.textContent = 'showing ' + shown + ' of ' + cards.length + ' images';
}
if (location.hash === '#errors') document.getElementById('errors-only').checked = true;  // report.html#errors
document.getElementById('class-filter').addEventListener('change', refresh);
document.getElementById('errors-only').addEventListener('change', refresh);
document.getElementById('order').addEventListener('click', () => { descending = !descending; refresh(); });
refresh();
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def per_class_rates(matrix: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(sensitivity, specificity) of each class, one vs rest, from a confusion matrix (rows: true class); nan
    where a class has no positive (or no negative) image."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    positives, predicted, total = matrix.sum(axis=1), matrix.sum(axis=0), matrix.sum()
    negatives = total - positives
    tn = total - positives - predicted + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / positives, tn / negatives


def _labelled_sections(rows: Sequence[ReportRow], class_names: List[str], resamples: int, seed: int) -> str:
    from sklearn.metrics import confusion_matrix

    known = [r for r in rows if r.probs is not None and r.label is not None]
    if not known:
        return ""
    labels = np.array([r.label for r in known])
    probs = np.stack([r.probs for r in known])
    matrix = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(len(class_names))))
    cells = [[f"<b>{_text(c)}</b>"] + [str(v) for v in matrix[i]] for i, c in enumerate(class_names)]
    metrics = compute_metrics(labels, probs, float("nan"))
    intervals = bootstrap_intervals(labels, probs, resamples, seed) if resamples else {}

    def interval(name: str) -> str:
        low, high, _ = intervals.get(name, (np.nan, np.nan, 0))
        return f"{low:.4f} - {high:.4f}" if np.isfinite(low) else "-"
    shown = [(_text(k), f"{v:.4f}", interval(k)) for k, v in metrics.items() if k not in ("val_loss",
                                                                                            "roc_auc_present")]
    sensitivity, specificity = per_class_rates(matrix)

    def rate(value: float) -> str:
        return f"{value:.3f}" if np.isfinite(value) else "-"
    rates = [[f"<b>{_text(c)}</b>", str(int(matrix[i].sum())), rate(sensitivity[i]), rate(specificity[i])]
             for i, c in enumerate(class_names)]
    ci_note = (f"95% confidence intervals: {resamples} bootstrap resamples of these images (seed {seed})."
               if resamples else "")
    return (f"<h2>Labelled images: {len(known)}</h2><p>Rows: true class; columns: predicted class.</p>"
            + _table(["true \\ predicted"] + class_names, cells)
            + "<h2>Sensitivity and specificity per class (one vs rest)</h2>"
            + _table(["class", "images", "sensitivity", "specificity"], rates)
            + "<h2>Metrics (upstream's, as in metrics_test.csv)</h2>"
            + f"<p class='muted'>{ci_note}</p>"
            + _table(["metric", "value", "95% CI"], shown))


def write_report(path: str, rows: List[ReportRow], class_names: List[str], description: str,
                 max_images: int = 500, notes: Optional[List[str]] = None, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0, extra_sections: str = "") -> None:
    """The page for `rows` (every image of the run); the gallery holds the `max_images` most confident. `notes`:
    lines of the run's summary shown under it (unreadable images, --group_by images matching no group, ...)."""
    readable = [r for r in rows if r.probs is not None]
    unreadable = [r for r in rows if r.probs is None]
    counts = np.bincount([int(np.argmax(r.probs)) for r in readable], minlength=len(class_names))
    peak = max(1, int(counts.max()) if len(counts) else 1)
    distribution = [[f"<b>{_text(c)}</b>", str(int(n)), f'<span class="bar" style="width:{160 * n // peak}px">'
                     f"</span>"] for c, n in zip(class_names, counts)]
    gallery_rows = sorted(readable, key=lambda r: -float(np.max(r.probs)))[:max_images]
    report_dir = os.path.dirname(os.path.abspath(path))
    cards, wrong_count = [], 0
    for r in gallery_rows:
        predicted = int(np.argmax(r.probs))
        wrong = r.label is not None and r.label != predicted
        wrong_count += wrong
        thumb = _thumbnail(r.path)
        picture = f'<img src="{thumb}" alt="{_text(r.name)}">' if thumb else '<p class="muted">no preview</p>'
        heat = ""
        if r.heatmap:
            link = urllib.parse.quote(os.fsencode(os.path.relpath(r.heatmap, report_dir)))
            heat = f'<a href="{link}"><img class="heat" src="{link}" loading="lazy" alt="heat map"></a>'
        probs = "<br>".join(f"{_text(c)}: {p:.3f}" for c, p in zip(class_names, r.probs))
        truth = "" if r.label is None else f"<br>true: {_text(class_names[r.label])}" + \
            (' <span class="tag">misclassified</span>' if wrong else "")
        cards.append(f'<div class="card{" wrong" if wrong else ""}" data-confidence="{float(np.max(r.probs)):.6f}" '
                     f'data-wrong="{int(wrong)}" data-prediction="{_text(class_names[predicted])}">{picture}{heat}'
                     f"<b>{_text(class_names[predicted])}</b> ({float(np.max(r.probs)):.3f}){truth}"
                     f'<br><span class="muted">{_text(r.name)}</span><br>{probs}</div>')
    options = "".join(f'<option value="{_text(c)}">{_text(c)}</option>' for c in class_names)
    skipped = ""
    if unreadable:
        items = "".join(f"<li>{_text(r.name)}: {_text(r.error or '')}</li>" for r in unreadable[:50])
        more = f"<li>... {len(unreadable) - 50} more</li>" if len(unreadable) > 50 else ""
        skipped = f"<h2>Unreadable images: {len(unreadable)}</h2><ul>{items}{more}</ul>"
    notes_html = "".join(f"<li>{_text(n)}</li>" for n in notes or [])
    legend = f'<div class="legend"><h2>Reading the heat maps</h2><p>{HEATMAP_LEGEND}</p></div>' \
        if any(r.heatmap for r in gallery_rows) else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RETFound predictions</title><style>{_STYLE}</style></head>
<body>
<h1>RETFound predictions</h1>
<p class="note" id="research-use">{html.escape(RESEARCH_USE)}</p>
<p id="summary">{len(rows)} images, {len(readable)} predicted, {len(unreadable)} unreadable.
Model: {_text(description)}. Written {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}.</p>
{f'<ul id="notes">{notes_html}</ul>' if notes_html else ''}
{extra_sections}
<h2>Predicted classes</h2>{_table(["class", "images", ""], distribution)}
{_labelled_sections(rows, class_names, resamples, seed)}
{skipped}
{legend}
<h2>Gallery, by confidence</h2>
<p>Class: <select id="class-filter"><option value="">all</option>{options}</select>
<label><input type="checkbox" id="errors-only"> misclassified only ({wrong_count})</label>
<button id="order">reverse order</button> <span id="shown"></span>
{f'(the {max_images} most confident of {len(readable)})' if len(readable) > max_images else ''}</p>
<div class="gallery" id="gallery">{"".join(cards)}</div>
<script>{_SCRIPT}</script>
</body></html>
"""
    with atomic_write(path, encoding="utf-8") as fh:
        fh.write(page)
