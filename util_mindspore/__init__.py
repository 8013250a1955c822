"""RETFound for MindSpore: the package behind the upstream-named scripts at the top of the checkout.

One package per concern, each allowed to import only those listed before it (docs/ARCHITECTURE.md draws them):

    errors.py, registry.py   what every package reads: the errors a user can act on, the model table (no MindSpore)
    files/        whole-or-nothing files, printable names, where caches live
    process/      one process of a run: device, ranks under msrun, signals, logs, progress, seeds, run lock
    checkpoints/  checkpoint files: the .ckpt and .pth codecs, the hub, conversion and its cache, our training
                  checkpoints, what a checkpoint says about its model
    data/         images in: folders, transforms and augmentation, mixup, lists of images to predict on
    evaluation/   numbers and pictures out: probabilities, upstream's metrics and intervals, figures, report
    models/       the cells: layers, blocks, the ViT / DINOv3 / MAE families, the precision policy, loading weights
                  into them, create_model
    training/     the compiled step, optimizer and schedule, the epoch loop, fine-tuning and MAE pre-training runs
    inference/    runtimes (MindSpore, onnxruntime, OpenVINO), prediction, heat maps, export and deployment
    cli/          the command line: shared flags, how a script starts and ends, the console entry points
    reference/    upstream's PyTorch models and checkpoint layouts, for the tests and benchmarks (needs `.[dev]`;
                  nothing else in the package imports it)
"""
