"""Run an exported model on batches: onnxruntime (an .onnx file export_mindspore.py wrote, with its .json beside
it) or OpenVINO (its IR, on CPU servers); the MindSpore runtime is inference/mindspore_runtime.py. Nothing here imports
MindSpore, so predicting from an exported file never loads it (about 450 MB of memory, docs/PERFORMANCE.md).

Each gives, per batch, float32 logits and/or embeddings (util_mindspore/evaluation/probabilities.py turns logits
into probabilities, as evaluation does).
"""
import gc
import os
from typing import Iterable, Optional, Tuple

import numpy as np

from util_mindspore.errors import WeightError, first_line
from util_mindspore.evaluation.probabilities import softmax
from util_mindspore.inference.deployment import read_export_description


def pad_batch(images: np.ndarray, size: Optional[int]) -> Tuple[np.ndarray, int]:
    """(images padded with zero images up to `size`, the real count): a short last batch in a graph compiled or
    exported for one batch size."""
    n = len(images)
    if size and n < size:
        images = np.concatenate([images, np.zeros((size - n,) + images.shape[1:], images.dtype)])
    return images, n


def onnx_session(path: str) -> "onnxruntime.InferenceSession":  # noqa: F821
    """onnxruntime's CPU session of an .onnx file, its log held to errors; one line for a file it cannot load."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.NoSuchFile, ort_errors.InvalidGraph,
            ort_errors.InvalidArgument) as exc:
        raise WeightError(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from exc


def openvino_model(path: str, precision: str = "float32", num_threads: Optional[int] = None) -> object:
    """An OpenVINO compiled model on the CPU: float32 unless `precision` is bfloat16 (OpenVINO's own default on
    CPUs with bfloat16, which this never leaves to chance)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16"}[precision]}
    if num_threads:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    return ov.Core().compile_model(path, "CPU", config)


class _ExportedRuntime:
    """A file export_mindspore.py wrote; its .json gives the classes, input size and output kind."""

    engine = "exported"

    def __init__(self, path: str, sidecar_path: str, want_embedding: bool, input_size: Optional[int],
                 batch_size: Optional[int]) -> None:
        sidecar = read_export_description(sidecar_path)
        kind, class_names = sidecar["output"]["kind"], sidecar["output"]["class_names"]
        self.input_size = sidecar["input"]["shape"][-1]
        fixed = sidecar["input"]["shape"][0]
        if want_embedding != (kind == "embedding"):
            raise WeightError(f"{path} outputs {kind}s: " + (
                "export the encoder with export_mindspore.py --embeddings" if want_embedding else
                "predict with a file exported without --embeddings, or add --embeddings"))
        if input_size and input_size != self.input_size:
            raise WeightError(f"--input_size {input_size} does not fit {path}, exported for {self.input_size} px")
        if isinstance(fixed, int) and fixed != batch_size:
            raise WeightError(f"{path} was exported for batch size {fixed}: use --batch_size {fixed}")
        self.path, self.sidecar = path, sidecar
        self.class_names = None if want_embedding else class_names
        self.embedding_description = sidecar["output"].get("meaning")
        self.embedding_dim = sidecar["output"]["shape"][-1] if want_embedding else None
        self.fixed_batch = fixed if isinstance(fixed, int) else None
        self.description = f"{path} ({self.engine}, {sidecar.get('model', 'model')})"

    def _pad(self, images: np.ndarray) -> Tuple[np.ndarray, int]:
        return pad_batch(images, self.fixed_batch)

    def _outputs(self, out: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        out = np.asarray(out, np.float32)
        return (None, out) if self.embedding_dim else (out, None)


class OnnxRuntime(_ExportedRuntime):
    """An exported .onnx run by onnxruntime's CPU provider."""

    engine = "onnxruntime"

    def __init__(self, path: str, want_embedding: bool, input_size: Optional[int] = None,
                 batch_size: Optional[int] = None) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise WeightError(f"{path}: running an ONNX file needs onnxruntime: pip install -e \".[onnx]\"") from None
        super().__init__(path, os.path.splitext(path)[0] + ".json", want_embedding, input_size, batch_size)
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        images, n = self._pad(images)
        return self._outputs(self.session.run(None, {self.input_name: images})[0][:n])


def openvino_bfloat16_available() -> bool:
    """Whether OpenVINO's CPU plugin can compute in bfloat16 here (AVX-512 BF16 or AMX)."""
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRuntime(_ExportedRuntime):
    """OpenVINO IR (.xml + .bin) on the CPU, float32 unless bfloat16 is asked for.

    In bfloat16, `measure_precision` first runs the sample images in float32, then (the float32 model freed) in
    bfloat16, and `precision_check` says how far bfloat16 moved the results there (top-1 agreement, largest
    probability difference): no number changes without a figure. One model at a time holds memory.
    """

    engine = "OpenVINO"

    def __init__(self, path: str, want_embedding: bool, input_size: Optional[int] = None,
                 batch_size: Optional[int] = None, precision: str = "float32", sample: int = 64,
                 sidecar_path: Optional[str] = None) -> None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise WeightError(f"{path}: OpenVINO is not installed: pip install -e \".[openvino]\"") from None
        super().__init__(path, sidecar_path or os.path.splitext(path)[0] + ".json", want_embedding, input_size,
                         batch_size)
        if precision == "bfloat16" and not openvino_bfloat16_available():
            raise WeightError("--precision bfloat16: this CPU has no bfloat16 arithmetic OpenVINO can use "
                              "(AVX-512 BF16 or AMX); use --precision float32")
        self.precision, self.sample = precision, sample
        self.compiled = self._compile(precision) if precision == "float32" else None
        self.description = f"{path} (OpenVINO on CPU, {precision}, {self.sidecar.get('model', 'model')})"
        self.compared, self.agreeing, self.max_probability_diff, self.max_output_diff = 0, 0, 0.0, 0.0

    def _compile(self, precision: str) -> object:
        try:
            return openvino_model(self.path, precision)
        except RuntimeError as exc:
            raise WeightError(f"{self.path}: OpenVINO cannot load it ({first_line(exc)})") from exc

    @property
    def wants_sample(self) -> bool:
        """Whether `measure_precision` should be given the first images before the run (bfloat16, not yet done)."""
        return self.precision != "float32" and self.compiled is None and self.sample > 0

    def measure_precision(self, batches: Iterable[np.ndarray]) -> None:
        """The sample's float32 outputs, then the reduced-precision model compiled and compared on the same images."""
        reference = self._compile("float32")
        batches = [self._pad(images) for images in batches]
        full = [np.asarray(reference(images)[0], np.float32)[:n] for images, n in batches]
        del reference
        gc.collect()  # the float32 model's memory goes before the bfloat16 model is built
        self.compiled = self._compile(self.precision)
        for (images, n), expected in zip(batches, full):
            self._compare(np.asarray(self.compiled(images)[0], np.float32)[:n], expected)

    def __call__(self, images: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        if self.compiled is None:  # bfloat16 without a sample (precision_sample 0)
            self.compiled = self._compile(self.precision)
        images, n = self._pad(images)
        return self._outputs(np.asarray(self.compiled(images)[0], np.float32)[:n])

    def _compare(self, reduced: np.ndarray, full: np.ndarray) -> None:
        take = min(len(full), self.sample - self.compared)
        reduced, full = reduced[:take], full[:take]
        self.max_output_diff = max(self.max_output_diff, float(np.abs(reduced - full).max(initial=0.0)))
        if not self.embedding_dim:
            self.agreeing += int((reduced.argmax(axis=1) == full.argmax(axis=1)).sum())
            diff = np.abs(softmax(reduced) - softmax(full)).max(initial=0.0)
            self.max_probability_diff = max(self.max_probability_diff, float(diff))
        self.compared += take

    def precision_check(self) -> Optional[str]:
        """One line on what bfloat16 changed against float32 on the sample, or None in float32."""
        if self.precision == "float32":
            return None
        if not self.compared:
            return "bfloat16: not compared with float32 (--precision_sample 0)"
        if self.embedding_dim:
            return (f"bfloat16 against float32 on {self.compared} images: embeddings differ by at most "
                    f"{self.max_output_diff:.3g}")
        return (f"bfloat16 against float32 on {self.compared} images: top-1 class agrees on {self.agreeing} of "
                f"{self.compared}; probabilities differ by at most {self.max_probability_diff:.3g}")
