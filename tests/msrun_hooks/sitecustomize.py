"""Loaded at start-up by every msrun worker of tests/process/test_distributed.py (it is put first on PYTHONPATH).

After each validation, each rank writes the sha256 of its model's weights to $RETFOUND_TEST_DIGEST_DIR/rank<r>.txt,
so the test can check that data-parallel ranks hold identical weights. Test code, not the project's.
"""
import hashlib
import os

if os.environ.get("RETFOUND_TEST_DIGEST_DIR"):
    import numpy as np

    from util_mindspore.training import classification as engine

    _evaluate = engine.evaluate

    def _evaluate_and_digest(model, loader, args, mode, class_names, *rest, **named):
        results = _evaluate(model, loader, args, mode, class_names, *rest, **named)
        if mode == "val":
            digest = hashlib.sha256()
            for name, param in model.parameters_and_names():
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(param.asnumpy()).tobytes())
            folder = os.environ["RETFOUND_TEST_DIGEST_DIR"]
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"rank{args.rank}.txt"), "w") as fh:
                fh.write(digest.hexdigest())
        return results

    engine.evaluate = _evaluate_and_digest
