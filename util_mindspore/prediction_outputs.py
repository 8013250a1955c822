"""What predict_mindspore.py writes, row by row as batches finish (memory flat in the number of images), each
file under a temporary name until the run completes.

predictions.csv: path, status (ok / unreadable: why), prediction, prob_<class>..., and label, correct when known.
embeddings.npy: N x D float32, one row per predictions.csv row (NaN for an unreadable image).
Feature.csv: upstream latent_feature.ipynb's format, name,feature_0..feature_<D-1>, readable images only.
predictions_by_group.csv: per --group_by group, the mean probability of its readable images.
Paths that are not valid UTF-8 (Linux names are bytes) are written with backslash escapes.
"""
import csv
import os
import re

import numpy as np

from util_mindspore.atomic_files import publish, temporary_name


class _RowFile:
    """A CSV written row by row under a temporary name; `close(keep)` publishes it or throws it away."""

    def __init__(self, path, header):
        self.path, self.tmp = path, temporary_name(path)
        self.fh = open(self.tmp, "w", newline="", encoding="utf-8", errors="backslashreplace")
        self.writer = csv.writer(self.fh)
        self.writer.writerow(header)

    def close(self, keep):
        self.fh.close()
        if keep:
            publish(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


class PredictionWriter:
    def __init__(self, out_dir, count, class_names=None, labelled=False, embedding_dim=None, group_by=None):
        self.class_names, self.labelled = class_names, labelled
        self.files, self.count = [], count
        self.summary = {"images": 0, "unreadable": [], "per_class": {}, "correct": 0, "labelled": 0}
        self.predictions = None
        if class_names:
            header = ["path", "status", "prediction"] + [f"prob_{c}" for c in class_names]
            self.predictions = self._open(os.path.join(out_dir, "predictions.csv"),
                                          header + (["label", "correct"] if labelled else []))
        self.features = self.embeddings = None
        if embedding_dim:
            self.features = self._open(os.path.join(out_dir, "Feature.csv"),
                                       ["name"] + [f"feature_{i}" for i in range(embedding_dim)])
            self.embeddings_path = os.path.join(out_dir, "embeddings.npy")
            self.embeddings_tmp = temporary_name(self.embeddings_path)
            self.embeddings = np.lib.format.open_memmap(self.embeddings_tmp, mode="w+", dtype=np.float32,
                                                        shape=(count, embedding_dim))
            self.embeddings[:] = np.nan
        self.group_pattern = re.compile(group_by) if group_by else None
        self.groups = {}  # group -> [sum of probabilities, images, labels seen]
        self.group_path = os.path.join(out_dir, "predictions_by_group.csv")
        self.row = 0

    def _open(self, path, header):
        self.files.append(_RowFile(path, header))
        return self.files[-1]

    def add(self, item, probs=None, embedding=None, error=None):
        """One image, in input order: its probabilities and / or embedding, or why it could not be read."""
        self.summary["images"] += 1
        if error:
            self.summary["unreadable"].append(f"{item.name} ({error})")
        if self.predictions:
            status = f"unreadable: {error}" if error else "ok"
            row = [item.name, status]
            if error:
                row += [""] * (1 + len(self.class_names))
            else:
                predicted = self.class_names[int(np.argmax(probs))]
                self.summary["per_class"][predicted] = self.summary["per_class"].get(predicted, 0) + 1
                row += [predicted] + [repr(float(p)) for p in probs]
            if self.labelled:
                correct = "" if error or item.label is None else int(int(np.argmax(probs)) == item.label)
                if correct != "":
                    self.summary["labelled"] += 1
                    self.summary["correct"] += correct
                row += [self.class_names[item.label] if item.label is not None else "", correct]
            self.predictions.writer.writerow(row)
        if self.features and not error:
            self.embeddings[self.row] = embedding
            self.features.writer.writerow([item.name] + [repr(float(v)) for v in embedding])
        if self.group_pattern is not None and probs is not None and not error:
            match = self.group_pattern.search(item.name)
            if match:
                key = match.group(1) if match.groups() else match.group(0)
                group = self.groups.setdefault(key, [np.zeros(len(probs)), 0, set()])
                group[0] += probs
                group[1] += 1
                group[2].add(item.label)
        self.row += 1

    def _write_groups(self):
        if self.group_pattern is None or not self.class_names:
            return
        labelled = self.labelled
        header = ["group", "images", "prediction"] + [f"prob_{c}" for c in self.class_names]
        out = _RowFile(self.group_path, header + (["label"] if labelled else []))
        for key in sorted(self.groups):
            total, count, labels = self.groups[key]
            mean = total / count
            row = [key, count, self.class_names[int(np.argmax(mean))]] + [repr(float(p)) for p in mean]
            if labelled:  # a group's label when all its images share one
                row.append(self.class_names[labels.pop()] if len(labels) == 1 and None not in labels else "")
            out.writer.writerow(row)
        out.close(keep=True)

    def close(self, keep=True):
        """Publish every file (keep=True, after the last image) or remove every temporary file."""
        for f in self.files:
            f.close(keep)
        if self.embeddings is not None:
            self.embeddings.flush()
            self.embeddings = None  # closes the memory map
            if keep:
                publish(self.embeddings_tmp, self.embeddings_path)
            elif os.path.exists(self.embeddings_tmp):
                os.remove(self.embeddings_tmp)
        if keep:
            self._write_groups()
