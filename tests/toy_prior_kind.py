"""A prior kind that is not part of vqprior, importable by module name, for the registry test: the example
masked-linear prior (examples/masked_linear_prior.py) under a name of its own."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "masked_linear_prior_example", Path(__file__).resolve().parent.parent / "examples" / "masked_linear_prior.py"
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


class ToyPrior(_module.MaskedLinearPrior):
    """The masked-linear prior as a built-in kind would be: a module plus one registry line."""
