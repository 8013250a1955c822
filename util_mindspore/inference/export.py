"""Write a model as MindIR, ONNX or OpenVINO IR and prove, by reloading the file, that it gives the model's outputs.

MindIR comes from `ms.export` with a free batch dimension. ONNX comes from `ms.export` too, which writes every
shape with the batch size it traced and has no Erf; `free_onnx_batch` edits that graph with the onnx package:
the batch dimension of the input and output becomes `batch`, every Reshape target gets -1 in place of its leading
dimension (no other dimension of a ViT depends on the batch), and the Tanh nodes the GELU's ONNX form stands in
for erf become Erf. Nothing is called exported until onnxruntime / GraphCell has run the written file at two batch
sizes and matched the model. OpenVINO's IR (.xml + .bin) is converted from that ONNX graph by OpenVINO itself,
float32 weights kept (never compressed to float16), and checked with OpenVINO's CPU plugin held to float32
(its default on CPUs with bfloat16 would round the check's own reference).
"""
import contextlib
import dataclasses
import os
import shutil
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional, Sequence

import mindspore as ms
import numpy as np

from util_mindspore.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size
from util_mindspore.errors import UserError, first_line
from util_mindspore.files.atomic import fsync_dir, fsync_file
from util_mindspore.inference.runtimes import onnx_session, openvino_model
from util_mindspore.models.compute_policy import (
    AMP_DTYPES,
    ComputePolicy,
    apply_policy,
    policy_for,
    reduced_precision_tolerance,
)

if TYPE_CHECKING:
    import onnx

    from util_mindspore.models.blocks import EncoderInterface
    from util_mindspore.models.factory import TrainedModel

SIDECAR_VERSION = 2  # 2: an encoder's output says which embedding it is; OpenVINO files
FORMATS = ("mindir", "onnx", "openvino")
# max |output difference| against the MindSpore model at float32, per format
FLOAT32_TOLERANCE = {"mindir": 1e-5, "onnx": 1e-4, "openvino": 1e-4}
TRACE_BATCH = 2  # an ONNX graph is traced at this batch size, then checked at VERIFY_BATCHES
VERIFY_BATCHES = (1, 3)


class ExportError(UserError):
    """An export could not be written or did not reproduce the model; one line."""


class EmbeddingNet(ms.nn.Cell):
    """The model's embedding (`forward_embedding`: what upstream's latent_feature.ipynb extracts) as the output."""

    def __init__(self, model: "EncoderInterface") -> None:
        super().__init__()
        self.model = model

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.model.forward_embedding(x)


@dataclasses.dataclass
class Verification:
    batch_sizes: tuple
    max_abs_diff: float
    tolerance: float
    output_dtype: str
    files: list  # what was written into out_dir, the file to load first

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def tolerance(fmt: str, amp_level: str, amp_dtype: str, reference: dict) -> float:
    """The export check's bound: FLOAT32_TOLERANCE, or reduced-precision rounding at the outputs' magnitude."""
    if amp_level == "O0":
        return FLOAT32_TOLERANCE[fmt]
    return reduced_precision_tolerance(amp_dtype, max(float(np.abs(r.astype(np.float32)).max())
                                                      for r in reference.values()))


def sample_inputs(batch_sizes: Sequence[int], input_size: int, seed: int = 0) -> Dict[int, np.ndarray]:
    """Normalised-image-like inputs: N(0, 1) per pixel, one array per batch size."""
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal((b, 3, input_size, input_size)).astype(np.float32) for b in batch_sizes}


def reference_outputs(net: ms.nn.Cell, inputs: Mapping[int, np.ndarray]) -> Dict[int, np.ndarray]:
    """What the MindSpore model gives (in PYNATIVE mode: no graph compiled here outlives a policy change)."""
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        return {b: net(ms.Tensor(x)).asnumpy() for b, x in inputs.items()}
    finally:
        ms.set_context(mode=mode)


def export_policy(fmt: str, amp_level: str, amp_dtype: str) -> ComputePolicy:
    """GPU/Ascend's plain forms (exported graphs run on any device); ONNX's own forms for ONNX."""
    return dataclasses.replace(policy_for(amp_level, amp_dtype, "GPU"), onnx_forms=fmt in ("onnx", "openvino"))


@contextlib.contextmanager
def _exporter(what: str) -> Iterator[None]:
    """MindSpore's exporter and loader, OpenVINO's converter and the runtimes report what they cannot do as
    RuntimeError: one line (ExportError) naming the step, the cause chained. Used around their calls only, so a
    RuntimeError of our own code is not taken for theirs."""
    try:
        yield
    except RuntimeError as exc:
        raise ExportError(f"{what}: {first_line(exc)}") from exc


def _trace_input(batch: Optional[int], input_size: int) -> ms.Tensor:
    if batch is None:
        return ms.Tensor(shape=[None, 3, input_size, input_size], dtype=ms.float32)
    return ms.Tensor(np.zeros((batch, 3, input_size, input_size), np.float32))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_mindir(net: ms.nn.Cell, stem: str, batch: Optional[int], input_size: int) -> str:
    """ms.export to `<stem>.mindir` (or, past 1 GB of parameters, `<stem>_graph.mindir` + `<stem>_variables/`);
    batch None leaves the batch dimension free. Returns the file to load."""
    with _exporter("MindSpore's MindIR exporter failed"):
        ms.export(net, _trace_input(batch, input_size), file_name=stem, file_format="MINDIR")
    return stem + ".mindir" if os.path.exists(stem + ".mindir") else stem + "_graph.mindir"


def _restore_erf(graph: "onnx.GraphProto", gelu_count: int) -> None:
    """The GELUs' ONNX form wrote Tanh where erf stands (the exporter has no Erf): make those nodes Erf."""
    tanh_nodes = [node for node in graph.node if node.op_type == "Tanh"]
    if len(tanh_nodes) != gelu_count:
        raise ExportError(f"the ONNX graph has {len(tanh_nodes)} Tanh nodes where {gelu_count} GELUs were expected")
    for node in tanh_nodes:
        node.op_type = "Erf"


def free_onnx_batch(model_proto: "onnx.ModelProto", gelu_count: int) -> "onnx.ModelProto":
    """Leave the batch dimension free in a graph traced at a fixed batch, and restore Erf (see module docstring)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    graph = model_proto.graph
    _restore_erf(graph, gelu_count)
    inferred = shape_inference.infer_shapes(model_proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    del inferred
    for i, node in enumerate(n for n in graph.node if n.op_type == "Reshape"):
        out_shape = shapes.get(node.output[0])
        if not out_shape or not all(out_shape[1:]):
            raise ExportError(f"the ONNX exporter left Reshape {node.name} without a known output shape")
        target = f"free_batch_shape_{i}"
        graph.initializer.append(numpy_helper.from_array(np.array([-1] + out_shape[1:], np.int64), target))
        node.input[1] = target
    _drop_unused(graph)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.value_info[:]  # the traced shapes of intermediate values no longer hold
    onnx.checker.check_model(model_proto)
    return model_proto


def _drop_unused(graph: "onnx.GraphProto") -> None:
    """Remove the traced shape constants nothing reads any more."""
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _rename_value(graph: "onnx.GraphProto", old: str, new: str) -> None:
    """Give a graph input or output a name a deployer can guess (the exporter's are internal ids)."""
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


class _FreshTrace(ms.nn.Cell):
    """`net` under a cell of its own, its parameters' names unchanged."""

    def __init__(self, net: ms.nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.net(x)


def write_onnx(net: ms.nn.Cell, stem: str, batch: Optional[int], input_size: int, gelu_count: int,
               output_name: str) -> str:
    """ms.export to ONNX traced at `batch` (TRACE_BATCH and freed when None), written to `<stem>.onnx`."""
    import onnx

    # ms.export, deprecated in favour of ms.onnx.export, which in MindSpore 2.10 fails on this graph with
    # dynamic_axes (BroadcastTo of the class token) and writes unsorted nodes with output_names
    # traced through a fresh wrapper cell: MindSpore 2.10 cannot export one cell to ONNX twice (the second trace of
    # the same cell fails on its BiasAdd nodes), which --format onnx,openvino would otherwise ask of it
    with _exporter("MindSpore's ONNX exporter failed"):
        ms.export(_FreshTrace(net), _trace_input(batch or TRACE_BATCH, input_size), file_name=stem + ".traced",
                  file_format="ONNX")
    traced = stem + ".traced.onnx"
    try:
        proto = onnx.load(traced)
    finally:
        os.remove(traced)
    if batch is None:
        proto = free_onnx_batch(proto, gelu_count)
    else:
        _restore_erf(proto.graph, gelu_count)
    _rename_value(proto.graph, proto.graph.input[0].name, "images")
    _rename_value(proto.graph, proto.graph.output[0].name, output_name)
    onnx.save_model(proto, stem + ".onnx")
    return stem + ".onnx"


def write_openvino(net: ms.nn.Cell, stem: str, batch: Optional[int], input_size: int, gelu_count: int,
                   output_name: str) -> str:
    """OpenVINO IR `<stem>.xml` + `<stem>.bin`, converted from the verified ONNX form (write_onnx)."""
    import openvino as ov

    onnx_path = write_onnx(net, stem + ".for_openvino", batch, input_size, gelu_count, output_name)
    try:
        with _exporter("OpenVINO's converter failed"):
            converted = ov.convert_model(onnx_path)
        ov.save_model(converted, stem + ".xml", compress_to_fp16=False)
    finally:
        os.remove(onnx_path)
    return stem + ".xml"


def run_exported(fmt: str, path: str, inputs: Mapping[int, np.ndarray]) -> Dict[int, np.ndarray]:
    """Outputs of the exported file, reloaded as a deployer would, for each batch of `inputs`."""
    if fmt == "mindir":
        graph = ms.nn.GraphCell(ms.load(path))
        return {b: graph(ms.Tensor(x)).asnumpy().astype(np.float32) for b, x in inputs.items()}
    if fmt == "openvino":
        compiled = openvino_model(path)
        return {b: np.asarray(compiled(x)[0], np.float32) for b, x in inputs.items()}
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return {b: session.run(None, {name: x})[0].astype(np.float32) for b, x in inputs.items()}


def check_format_available(fmt: str) -> None:
    """The packages a format needs (ONNX: onnx and onnxruntime; OpenVINO: those and openvino), or one line."""
    try:
        if fmt in ("onnx", "openvino"):
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        if fmt == "openvino":
            import openvino  # noqa: F401
    except ImportError as exc:
        extra = "openvino" if fmt == "openvino" else "onnx"
        raise ExportError(f"{fmt} export needs the {extra} extra: pip install -e \".[{extra}]\" "
                          f"({first_line(exc)})") from exc


def _publish(staging: str, out_dir: str) -> List[str]:
    """Move what the staging folder holds into out_dir (files after fsync; a MindIR's _variables folder whole);
    returns the names moved."""
    names = sorted(os.listdir(staging), key=lambda n: (os.path.isdir(os.path.join(staging, n)), n))
    mask = _umask()
    for name in names:
        src, dst = os.path.join(staging, name), os.path.join(out_dir, name)
        # ms.export writes read-only files and private folders; the user owns the result
        for folder, _, files in (os.walk(src) if os.path.isdir(src) else [(None, None, [src])]):
            if folder:
                os.chmod(folder, 0o777 & ~mask)
            for file in files:
                path = os.path.join(folder, file) if folder else file
                os.chmod(path, 0o666 & ~mask)
                fsync_file(path)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)  # a folder cannot be renamed over another
        os.replace(src, dst)
    fsync_dir(out_dir)
    return names


def export_verified(net: ms.nn.Cell, model: ms.nn.Cell, fmt: str, out_dir: str, name: str, input_size: int,
                    batch: Optional[int] = None, amp_level: str = "O0", amp_dtype: str = "float16") -> Verification:
    """Export `net` (model or EmbeddingNet(model)) as `<out_dir>/<name>.<fmt>` and return its Verification.

    Written into a staging folder inside out_dir, reloaded and compared there, and only then moved into place.
    MindSpore writes a MindIR whose parameters pass 1 GB (ViT-L) as `<name>_graph.mindir` plus `<name>_variables/`,
    which the graph names: the staging folder keeps those names. A failure leaves nothing and raises ExportError.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    if amp_dtype not in AMP_DTYPES:
        raise ExportError(f"--amp_dtype {amp_dtype}: choose from {', '.join(AMP_DTYPES)}")
    batches = (batch,) if batch else VERIFY_BATCHES
    inputs = sample_inputs(batches, input_size)
    apply_policy(model, policy_for(amp_level, amp_dtype, "CPU"))
    reference = reference_outputs(net, inputs)
    apply_policy(model, export_policy(fmt, amp_level, amp_dtype))
    staging = os.path.join(out_dir, f".{name}.{fmt}.{os.getpid()}.partial")
    try:
        os.makedirs(staging, exist_ok=True)
        stem = os.path.join(staging, name)
        if fmt == "mindir":
            written = write_mindir(net, stem, batch, input_size)
        else:
            gelu_count = sum(1 for _, cell in model.cells_and_names() if type(cell).__name__ == "GELU")
            output_name = "embedding" if isinstance(net, EmbeddingNet) else "logits"
            writer = write_onnx if fmt == "onnx" else write_openvino
            written = writer(net, stem, batch, input_size, gelu_count, output_name)
        with _exporter(f"the written {fmt} file does not run"):
            outputs = run_exported(fmt, written, inputs)
        worst = max(float(np.abs(outputs[b] - reference[b].astype(np.float32)).max()) for b in batches)
        limit = tolerance(fmt, amp_level, amp_dtype, reference)
        if not worst <= limit:
            raise ExportError(f"{fmt} export of {name} does not reproduce the model: max |diff| {worst:.3g} > "
                              f"{limit:.3g}; nothing written")
        files = _publish(staging, out_dir)
        files.sort(key=lambda name: name != os.path.basename(written))  # the file to load first
        return Verification(batches, worst, limit, str(reference[batches[0]].dtype), files)
    except OSError as exc:  # a full or read-only disk: named, nothing kept (a bug's exception passes as it is)
        raise ExportError(f"{fmt} export to {out_dir} failed: {exc.strerror or first_line(exc)}") from exc
    finally:
        apply_policy(model, policy_for(amp_level, amp_dtype, "CPU"))
        shutil.rmtree(staging, ignore_errors=True)


def describe(trained: "TrainedModel", source: str, files: Mapping[str, str], checks: Mapping[str, Verification],
             batch: Optional[int], output_dim: int, embeddings: bool, amp_level: str = "O0",
             amp_dtype: str = "float16") -> Dict[str, object]:
    """The .json written beside exported files: what a deployer needs to feed them (input, preprocessing, classes;
    util_mindspore/inference/deployment.py reads it) and how each file was verified."""
    reduced = amp_level != "O0"
    formats = list(files)
    return {
        "format_version": SIDECAR_VERSION,
        "files": files,
        "model": trained.name, "source": source, "global_pool": trained.global_pool,
        "output": {"kind": "embedding" if embeddings else "logits", "shape": ["batch", output_dim],
                   "dtype": checks[formats[0]].output_dtype,
                   "class_names": trained.class_names,
                   "meaning": (f"the embedding: {trained.embedding}" if embeddings else
                               "logits; softmax over them gives the class probabilities")},
        "input": {"shape": ["batch" if batch is None else batch, 3, trained.input_size, trained.input_size],
                  "dtype": "float32", "layout": "NCHW", "channels": "RGB"},
        "preprocessing": {
            "decode": "PIL Image.open(path).convert('RGB')",
            "resize_shorter_side": eval_resize_size(trained.input_size), "interpolation": "bicubic",
            "center_crop": trained.input_size, "scale": "1/255", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)},
        "precision": {"amp_level": amp_level, "reduced_dtype": amp_dtype if reduced else None},
        "verification": {fmt: checks[fmt].as_dict() for fmt in formats},
    }
