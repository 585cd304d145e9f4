"""Import the files in examples/ by path (they are not a package)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def half_res_encoder():
    spec = importlib.util.spec_from_file_location("half_res_encoder_example", EXAMPLES / "half_res_encoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
