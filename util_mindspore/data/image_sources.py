"""What to predict on: a folder of images (any layout, searched recursively), one image, or a CSV list of paths.

Labels are optional: a folder whose top-level sub-folders are all class names of the model is a labelled
`<class>/` layout; a CSV may carry a `label` column of class names. Only regular files are taken (a FIFO or
device named like an image is never opened); symbolic links are followed, as torchvision's ImageFolder does.
"""
import csv
import dataclasses
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from util_mindspore.data.datasets import DECODE_ERRORS, IMG_EXTENSIONS, DataError, is_regular_file


@dataclasses.dataclass
class ImageItem:
    path: str  # where to read it
    name: str  # how the CSVs name it: relative to --data_path, or as the CSV lists it
    label: Optional[int] = None


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS) and is_regular_file(path)


def _from_folder(root: str, class_names: Optional[Sequence[str]]) -> List[ImageItem]:
    items = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            if _is_image_file(path):
                items.append(ImageItem(path, os.path.relpath(path, root)))
    index = {name: i for i, name in enumerate(class_names or [])}
    tops = [item.name.split(os.sep)[0] if os.sep in item.name else None for item in items]
    if items and index and all(top in index for top in tops):
        for item, top in zip(items, tops):
            item.label = index[top]
    return items


def _from_csv(csv_path: str, class_names: Optional[Sequence[str]]) -> List[ImageItem]:
    base = os.path.dirname(os.path.abspath(csv_path))
    index = {name: i for i, name in enumerate(class_names or [])}
    items = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise DataError(f"{csv_path}: needs a header with a `path` column (and optionally `label`)")
            for line, row in enumerate(reader, start=2):
                listed = (row.get("path") or "").strip()
                if not listed:
                    raise DataError(f"{csv_path}, line {line}: empty path")
                label = (row.get("label") or "").strip()
                if label and label not in index:
                    raise DataError(f"{csv_path}, line {line}: label '{label}' is not a class of this model "
                                    f"({', '.join(class_names or []) or 'it has no classifier head'})")
                path = listed if os.path.isabs(listed) else os.path.join(base, listed)
                items.append(ImageItem(path, listed, index[label] if label else None))
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return items


def list_images(data_path: str, class_names: Optional[Sequence[str]] = None) -> List[ImageItem]:
    """The images of --data_path, in a stable order; raises DataError when there are none."""
    if os.path.isdir(data_path):
        items = _from_folder(data_path, class_names)
    elif data_path.lower().endswith(".csv") and os.path.isfile(data_path):
        items = _from_csv(data_path, class_names)
    elif _is_image_file(data_path):
        items = [ImageItem(data_path, os.path.basename(data_path))]
    else:
        raise DataError(f"--data_path {data_path}: not a folder, an image ({', '.join(IMG_EXTENSIONS)}) or a .csv "
                        "list of paths")
    if not items:
        raise DataError(f"--data_path {data_path}: no images found ({', '.join(IMG_EXTENSIONS)})")
    return items


def decode(item: ImageItem, transforms: Mapping[str, Callable[[Image.Image], np.ndarray]]
           ) -> Tuple[Optional[Dict[str, np.ndarray]], Optional[str]]:
    """({name: CHW float32 array} for each transform of `transforms`, None), or (None, why it cannot be read): the
    file is decoded once whatever the number of transforms; a bad image is reported, never raised."""
    try:
        if not _is_image_file(item.path):
            return None, "not a regular image file" if os.path.exists(item.path) else "file not found"
        with Image.open(item.path) as img:
            img.load()
            return {name: transform(img) for name, transform in transforms.items()}, None
    except DECODE_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for quoted in (repr(item.path), f'"{item.path}"', item.path):  # the row names the file already
            reason = reason.replace(quoted, "")
        return None, reason.strip(" :") or type(exc).__name__
