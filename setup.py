"""Install RETFound for MindSpore: `pip install -e .` (runtime) or `pip install -e ".[dev]"` (tests)."""
from setuptools import find_packages, setup

# Each dependency is bounded above by its next major release (numpy by MindSpore's own limit), so that a new
# release cannot break a fresh install; constraints.txt pins the exact versions CI tests with.
RUNTIME = [
    "mindspore==2.10.0",
    # MindSpore 2.10 breaks with numpy 2 (GeneratorDataset and the first PyNative reshape fail).
    "numpy>=1.22,<2",
    "huggingface_hub>=0.20,<3",
    "scikit-learn>=1.2,<2",
    "pillow>=9.0,<14",
    "matplotlib>=3.5,<4",
    "tqdm>=4.60,<5",
    "safetensors>=0.4,<1",
    "filelock>=3.10,<5",
    "zlib-ng>=0.4,<2",  # fast CRC-32 checks of .pth storages (conversion)
]
# torch is never needed at run time: the converter has a torch-free .pth reader.
TORCH = ["torch==2.14.1"]
# The PyTorch reference for the parity tests: timm 0.9.2 is the version upstream RETFound pins,
# and it needs torchvision, which works here only as the pair torch 2.14.1 / torchvision 0.29.1.
# Export to ONNX (export_mindspore.py): the onnx package edits the graph, onnxruntime verifies it. ml_dtypes (onnx's)
# from 0.6 on needs numpy 2.
ONNX = ["onnx>=1.17,<2", "onnxruntime>=1.20,<2", "ml_dtypes>=0.5,<0.6"]
# OpenVINO on CPU servers (predict --runtime openvino, export --format openvino): its IR is converted from the ONNX
# form, so it needs the ONNX extra too. openvino 2025-2026 runs with numpy < 2.
OPENVINO = ["openvino>=2025.0,<2027", *ONNX]
# TensorBoard scalars under --log_dir, as upstream writes them (main_finetune_mindspore.py says when it is missing).
TENSORBOARD = ["tensorboardX>=2.6,<3"]
# The example notebooks (examples/) and the kernel the tests run them in.
NOTEBOOK = ["nbclient>=0.10,<1", "nbformat>=5.9,<6", "ipykernel>=6.29,<8"]
DEV = ["pytest>=8,<10", "ruff>=0.15,<0.18", "torch==2.14.1", "torchvision==0.29.1", "timm==0.9.2", *OPENVINO,
       *TENSORBOARD, *NOTEBOOK]
# Console commands beside the upstream-named scripts (util_mindspore/cli/startup.py quiets MindSpore's log and takes
# SIGINT / SIGTERM before MindSpore loads, as the scripts' own __main__ blocks do).
CONSOLE = [f"retfound-{name}=util_mindspore.cli.commands:{name}" for name in
           ("train", "pretrain", "predict", "export", "convert", "selfcheck", "reconstruct", "benchmark")]

setup(
    name="retfound-mindspore",
    version="0.1.0",
    description="RETFound retinal foundation models (MAE, DINOv2, DINOv3) for MindSpore: fine-tuning, MAE "
                "pre-training, prediction, export",
    python_requires=">=3.9,<3.12",
    py_modules=[
        "models_vit_mindspore",
        "engine_finetune_mindspore",
        "main_finetune_mindspore",
        "convert_weights_example",
        "selfcheck_mindspore",
        "export_mindspore",
        "predict_mindspore",
        "models_mae_mindspore",
        "main_pretrain_mindspore",
        "engine_pretrain_mindspore",
        "mae_visualize_mindspore",
        "benchmark_mindspore",
    ],
    packages=find_packages(include=["util_mindspore", "util_mindspore.*"]),
    install_requires=RUNTIME,
    extras_require={"torch": TORCH, "onnx": ONNX, "openvino": OPENVINO, "tensorboard": TENSORBOARD,
                    "notebook": NOTEBOOK, "dev": DEV},
    entry_points={"console_scripts": CONSOLE},
)
