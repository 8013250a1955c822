"""What predict_mindspore.py writes, row by row as batches finish (memory flat in the number of images), each file
under a temporary name until the run completes.

predictions.csv: path, status (ok / unreadable: why), prediction, prob_<class>..., and label, correct when known.
embeddings.npy: N x D float32, one row per predictions.csv row (NaN for an unreadable image), written row after row
(no memory map: a full disk is an error message, never a SIGBUS); embeddings.json says which vector it holds.
Feature.csv: upstream latent_feature.ipynb's format, name,feature_0..feature_<D-1>, readable images only.
predictions_by_group.csv: per --group_by group, the mean probability of its readable images.
Names are written as file_names.printable gives them (undecodable bytes as \\xNN) and kept from running as
spreadsheet formulas (file_names.spreadsheet_safe).
"""
import csv
import json
import os
import re
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, TypeVar

import numpy as np

from util_mindspore.files.atomic import publish, temporary_name
from util_mindspore.files.names import printable, spreadsheet_safe

if TYPE_CHECKING:
    from util_mindspore.data.image_sources import ImageItem


def text_cell(value: str) -> str:
    """A name or label as a CSV cell: printable, and shown as text by spreadsheets."""
    return spreadsheet_safe(printable(value))


class _RowFile:
    """A file written row by row under a temporary name; `close(keep)` publishes it or throws it away."""

    def __init__(self, path: str, header: Optional[Sequence[str]] = None, binary: bool = False) -> None:
        self.path, self.tmp = path, temporary_name(path)
        self.fh = open(self.tmp, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"}))
        self.writer = None if binary else csv.writer(self.fh)
        if header is not None:
            self.writer.writerow(header)

    def close(self, keep: bool) -> None:
        if not self.fh.closed:
            self.fh.close()
        if keep:
            publish(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


_F = TypeVar("_F", bound=_RowFile)


class _EmbeddingFile(_RowFile):
    """embeddings.npy written sequentially: the .npy header for (count, dim) float32, then each row's bytes."""

    def __init__(self, path: str, count: int, dim: int) -> None:
        super().__init__(path, binary=True)
        self.dim = dim
        np.lib.format.write_array_header_1_0(self.fh, {"descr": "<f4", "fortran_order": False,
                                                       "shape": (count, dim)})

    def write(self, row: np.ndarray) -> None:
        self.fh.write(np.asarray(row, dtype="<f4").reshape(self.dim).tobytes())


class PredictionWriter:
    def __init__(self, out_dir: str, count: int, class_names: Optional[Sequence[str]] = None, labelled: bool = False,
                 embedding_dim: Optional[int] = None, group_by: Optional[str] = None,
                 embedding_meta: Optional[Mapping[str, object]] = None) -> None:
        self.class_names, self.labelled = class_names, labelled
        self.files, self.count = [], count
        self.summary = {"images": 0, "unreadable": [], "per_class": {}, "correct": 0, "labelled": 0,
                        "ungrouped": []}
        self.predictions = None
        if class_names:
            header = ["path", "status", "prediction"] + [f"prob_{text_cell(c)}" for c in class_names]
            self.predictions = self._add(_RowFile(os.path.join(out_dir, "predictions.csv"),
                                                  header + (["label", "correct"] if labelled else [])))
        self.features = self.embeddings = None
        if embedding_dim:
            self.features = self._add(_RowFile(os.path.join(out_dir, "Feature.csv"),
                                               ["name"] + [f"feature_{i}" for i in range(embedding_dim)]))
            self.embeddings = self._add(_EmbeddingFile(os.path.join(out_dir, "embeddings.npy"), count,
                                                       embedding_dim))
            self.embedding_meta = dict(embedding_meta or {}, rows=count, dim=embedding_dim,
                                       rows_order="input order, as the rows of Feature.csv" + (
                                           " and predictions.csv" if class_names else "") +
                                       " (NaN rows: unreadable images)")
            self.embedding_meta_path = os.path.join(out_dir, "embeddings.json")
        self.group_pattern = re.compile(group_by) if group_by else None
        self.groups = {}  # group -> [sum of probabilities, images, labels seen]
        self.group_path = os.path.join(out_dir, "predictions_by_group.csv")

    def _add(self, row_file: _F) -> _F:
        self.files.append(row_file)
        return row_file

    def add(self, item: "ImageItem", probs: Optional[np.ndarray] = None, embedding: Optional[np.ndarray] = None,
            error: Optional[str] = None) -> None:
        """One image, in input order: its probabilities and / or embedding, or why it could not be read."""
        self.summary["images"] += 1
        name = text_cell(item.name)
        if error:
            self.summary["unreadable"].append(f"{printable(item.name)} ({error})")
        if self.predictions:
            row = [name, f"unreadable: {printable(error)}" if error else "ok"]
            if error:
                row += [""] * (1 + len(self.class_names))
            else:
                predicted = self.class_names[int(np.argmax(probs))]
                self.summary["per_class"][predicted] = self.summary["per_class"].get(predicted, 0) + 1
                row += [text_cell(predicted)] + [repr(float(p)) for p in probs]
            if self.labelled:
                correct = "" if error or item.label is None else int(int(np.argmax(probs)) == item.label)
                if correct != "":
                    self.summary["labelled"] += 1
                    self.summary["correct"] += correct
                row += [text_cell(self.class_names[item.label]) if item.label is not None else "", correct]
            self.predictions.writer.writerow(row)
        if self.embeddings is not None:
            self.embeddings.write(np.full(self.embeddings.dim, np.nan, np.float32) if error else embedding)
            if not error:
                self.features.writer.writerow([name] + [repr(float(v)) for v in embedding])
        if self.group_pattern is not None and probs is not None and not error:
            match = self.group_pattern.search(item.name)
            if not match:
                self.summary["ungrouped"].append(printable(item.name))
                return
            key = match.group(1) if match.groups() else match.group(0)
            group = self.groups.setdefault(key, [np.zeros(len(probs)), 0, set()])
            group[0] += probs
            group[1] += 1
            group[2].add(item.label)

    def _write_groups(self) -> None:
        if self.group_pattern is None or not self.class_names:
            return
        labelled = self.labelled
        header = ["group", "images", "prediction"] + [f"prob_{text_cell(c)}" for c in self.class_names]
        out = _RowFile(self.group_path, header + (["label"] if labelled else []))
        try:
            for key in sorted(self.groups):
                total, count, labels = self.groups[key]
                mean = total / count
                row = [text_cell(key), count, text_cell(self.class_names[int(np.argmax(mean))])] + \
                    [repr(float(p)) for p in mean]
                if labelled:  # a group's label when all its images share one
                    row.append(text_cell(self.class_names[labels.pop()]) if len(labels) == 1 and None not in labels
                               else "")
                out.writer.writerow(row)
        except BaseException:
            out.close(keep=False)
            raise
        out.close(keep=True)

    def close(self, keep: bool = True) -> None:
        """Publish every file (keep=True, after the last image) or remove every temporary file."""
        try:
            if keep and self.embeddings is not None:
                meta = self._add(_RowFile(self.embedding_meta_path, binary=True))
                meta.fh.write(json.dumps(self.embedding_meta, indent=1, default=str).encode())
            for f in self.files:
                f.close(keep)
            if keep:
                self._write_groups()
        except BaseException:
            for f in self.files:
                f.close(False)
            raise
