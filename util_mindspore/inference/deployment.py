"""Feeding an exported model: the preprocessing its .json describes (export_mindspore.py writes it beside the files),
so a deployer never re-derives it. Needs numpy and Pillow only (no MindSpore):

    from util_mindspore.inference.deployment import ExportedModel
    exported = ExportedModel("export/RETFound_mae.json")
    batch = exported.preprocess(["eye1.jpg", "eye2.jpg"])        # (2, 3, 224, 224) float32, NCHW
    files = exported.files                                       # {"onnx": ".../RETFound_mae.onnx", ...}
"""
import json
import os
from typing import Dict, List, Sequence, Union

import numpy as np
from PIL import Image

from util_mindspore.data.transforms import resize_and_center_crop, to_rgb
from util_mindspore.errors import WeightError
from util_mindspore.evaluation.probabilities import softmax

_RESAMPLING = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
# what every reader of an export needs from its .json
_REQUIRED = (("files",), ("input", "shape"), ("output", "kind"), ("output", "class_names"), ("output", "shape"),
             ("preprocessing", "resize_shorter_side"), ("preprocessing", "center_crop"), ("preprocessing", "mean"),
             ("preprocessing", "std"), ("preprocessing", "interpolation"))


def read_export_description(json_path: str) -> dict:
    """The .json export_mindspore.py writes beside the files it exports, checked for what readers need; one line
    naming the file when it is missing, not JSON, or lacks a key."""
    try:
        with open(json_path, encoding="utf-8") as fh:
            description = json.load(fh)
    except FileNotFoundError:
        raise WeightError(f"{json_path}: missing: export_mindspore.py writes this description beside the files it "
                          "exports; keep them together") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightError(f"{json_path}: not the description export_mindspore.py writes (not JSON: {exc})") from exc
    for path in _REQUIRED:
        value = description
        for key in path:
            if not isinstance(value, dict) or key not in value:
                raise WeightError(f"{json_path}: not the description export_mindspore.py writes (no "
                                  f"{'.'.join(path)})")
            value = value[key]
    return description


class ExportedModel:
    """An export's description: its files, classes, output and the preprocessing of its input."""

    def __init__(self, json_path: str) -> None:
        self.sidecar = read_export_description(json_path)
        prep = self.sidecar["preprocessing"]
        if prep["interpolation"] not in _RESAMPLING:
            raise WeightError(f"{json_path}: unknown interpolation '{prep['interpolation']}' (one of "
                              f"{', '.join(_RESAMPLING)})")
        self.resize, self.crop = int(prep["resize_shorter_side"]), int(prep["center_crop"])
        self.mean = np.asarray(prep["mean"], np.float32)
        self.std = np.asarray(prep["std"], np.float32)
        self.resample = _RESAMPLING[prep["interpolation"]]
        folder = os.path.dirname(os.path.abspath(json_path))
        self.files: Dict[str, str] = {fmt: os.path.join(folder, name) for fmt, name in self.sidecar["files"].items()}
        self.class_names = self.sidecar["output"]["class_names"]
        self.output_kind = self.sidecar["output"]["kind"]

    def crop_image(self, image: Image.Image) -> Image.Image:
        """The RGB picture the model sees: decoded to RGB, the shorter side resized, the centre cut out."""
        return resize_and_center_crop(to_rgb(image), self.resize, self.crop, self.resample)

    def preprocess(self, images: Sequence[Union[str, Image.Image]]) -> np.ndarray:
        """(N, 3, crop, crop) float32 for image paths or PIL images: the input the exported model expects."""
        arrays = []
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                with Image.open(image) as opened:
                    opened.load()
                    picture = self.crop_image(opened)
            else:
                picture = self.crop_image(image)
            pixels = np.asarray(picture, np.float32) / 255.0
            arrays.append(((pixels - self.mean) / self.std).transpose(2, 0, 1))
        return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over the classes, in float64 (as predict_mindspore.py writes them)."""
        return softmax(logits)

    def top_classes(self, logits: np.ndarray) -> List[str]:
        return [self.class_names[int(i)] for i in np.argmax(logits, axis=1)]
