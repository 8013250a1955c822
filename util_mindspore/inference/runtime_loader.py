"""Which runtime runs a trained model, from what --resume names: MindSpore for a checkpoint, onnxruntime for an
exported .onnx, OpenVINO for an exported .xml or (exported once and cached) for a checkpoint; and whether the model
it opens can do what the run asks (a head for predictions, heat maps only in MindSpore)."""
import argparse
import os
from typing import TYPE_CHECKING, Optional, Union

from util_mindspore.errors import ArgumentError
from util_mindspore.inference.runtimes import OnnxRuntime, OpenVinoRuntime
from util_mindspore.process import distributed
from util_mindspore.process.logs import setup_logging

if TYPE_CHECKING:
    from util_mindspore.inference.mindspore_runtime import MindSporeRuntime
    from util_mindspore.models.factory import TrainedModel

# what prediction runs images through: each gives (logits or None, embeddings or None) per batch
Runtime = Union["MindSporeRuntime", OnnxRuntime, OpenVinoRuntime]


def runtime_kind(args: argparse.Namespace) -> str:
    """--runtime, with auto chosen by what --resume is."""
    if args.runtime != "auto":
        return args.runtime
    resume = args.resume.lower()
    return "onnxruntime" if resume.endswith(".onnx") else "openvino" if resume.endswith(".xml") else "mindspore"


def build_runtime(args: argparse.Namespace) -> Runtime:
    """Device and (under msrun) the process group first, then the model: MindSpore, onnxruntime or OpenVINO."""
    kind = runtime_kind(args)
    exported = args.resume.lower().endswith((".onnx", ".xml"))
    if args.precision != "float32" and kind != "openvino":
        raise ArgumentError(f"--precision {args.precision} is OpenVINO's (--runtime openvino); MindSpore's reduced "
                            "precision is --amp_level / --amp_dtype")
    if kind == "mindspore" and exported:
        raise ArgumentError(f"--runtime mindspore needs a checkpoint, not the exported {args.resume}")
    if kind == "onnxruntime" and not args.resume.lower().endswith(".onnx"):
        raise ArgumentError(f"--runtime onnxruntime runs an .onnx file (export_mindspore.py --format onnx), not "
                            f"{args.resume}")
    if kind == "mindspore":
        from util_mindspore.process import device
        device.keep_mindspore_files_in(os.path.join(args.output_dir, "mindspore"))
        args.device, args.amp_level = device.configure(args)
    args.distributed, args.rank, args.world_size = distributed.init_distributed_mode()
    setup_logging(args.rank)

    def load() -> "TrainedModel":
        from util_mindspore.models.factory import load_trained_model
        return load_trained_model(
            args.resume, args.model, args.nb_classes, args.input_size, args.global_pool,
            with_head=None if args.embeddings and kind == "mindspore" else not args.embeddings,
            cache_dir=args.weights_cache_dir)
    if kind == "onnxruntime":
        return OnnxRuntime(args.resume, args.embeddings, args.input_size, args.batch_size)
    if kind == "openvino":
        path, sidecar = args.resume, None
        if not exported:
            from util_mindspore.inference.export_cache import openvino_export
            settings = {k: getattr(args, k) for k in ("model", "nb_classes", "input_size", "global_pool", "embeddings")}
            path, sidecar = openvino_export(args.resume, settings, load, args.weights_cache_dir)
        return OpenVinoRuntime(path, args.embeddings, args.input_size, args.batch_size, args.precision,
                               args.precision_sample, sidecar)
    from util_mindspore.inference.mindspore_runtime import MindSporeRuntime
    from util_mindspore.models.compute_policy import policy_for
    return MindSporeRuntime(load(), policy_for(args.amp_level, args.amp_dtype, args.device), args.batch_size,
                            args.embeddings)


def check_runtime(args: argparse.Namespace, runtime: Runtime) -> Optional[int]:
    """What the chosen model can do against what was asked; returns --target as a class index (or None)."""
    needs_head = [flag for flag, on in (("--heatmaps", args.heatmaps), ("--report", args.report),
                                        ("--group_by", args.group_by), ("--target", args.target)) if on]
    if not runtime.class_names and (not args.embeddings or needs_head):
        wanted = ", ".join(needs_head) or "predictions"
        raise ArgumentError(f"{args.resume} has no classifier head: {wanted} need one (embeddings alone: "
                            "--embeddings)")
    if args.heatmaps and runtime.engine != "MindSpore":
        raise ArgumentError("--heatmaps needs the model in MindSpore: --resume a checkpoint, not an exported file")
    if args.target is None:
        return None
    names = runtime.class_names
    if args.target in names:
        return names.index(args.target)
    if args.target.isdigit() and int(args.target) < len(names):
        return int(args.target)
    raise ArgumentError(f"--target {args.target}: not a class of this model ({', '.join(names)})")


