"""Install RETFound for MindSpore: `pip install -e .` (runtime) or `pip install -e ".[dev]"` (tests)."""
from setuptools import setup

RUNTIME = [
    "mindspore==2.10.0",
    # MindSpore 2.10 breaks with numpy 2 (GeneratorDataset and the first PyNative reshape fail).
    "numpy>=1.22,<2",
    "huggingface_hub>=0.20",
    "scikit-learn>=1.2",
    "pillow>=9.0",
    "matplotlib>=3.5",
    "tqdm>=4.60",
    "safetensors>=0.4",
    "filelock>=3.10",
    "zlib-ng>=0.4",  # fast CRC-32 checks of .pth storages (weight_converter)
]
# torch is never needed at run time: the converter has a torch-free .pth reader.
TORCH = ["torch==2.14.1"]
# The PyTorch reference for the parity tests: timm 0.9.2 is the version upstream RETFound pins,
# and it needs torchvision, which works here only as the pair torch 2.14.1 / torchvision 0.29.1.
DEV = ["pytest>=7", "torch==2.14.1", "torchvision==0.29.1", "timm==0.9.2"]

setup(
    name="retfound-mindspore",
    version="0.1.0",
    description="RETFound retinal foundation models (MAE ViT-L/16, DINOv2 ViT-L/14) for MindSpore",
    python_requires=">=3.9,<3.12",
    py_modules=[
        "models_vit_mindspore",
        "engine_finetune_mindspore",
        "main_finetune_mindspore",
        "convert_weights_example",
    ],
    packages=["util_mindspore"],
    install_requires=RUNTIME,
    extras_require={"torch": TORCH, "dev": DEV},
)
