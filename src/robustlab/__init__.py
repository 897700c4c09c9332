"""robustlab: adversarial robustness of neural-network classifiers.

Attack, defend, certify and report, with one torch-native, batched API::

    import robustlab as rl
    test = rl.data.load("mnist", split="test")
    model = rl.models.load("runs/mnist-cnn")
    res = rl.attacks.PGD(rl.ThreatModel("linf", 0.3), steps=40).attack(model, x, y)

Submodules are imported lazily so ``import robustlab`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustlab.threat import ThreatModel

__version__ = "0.1.0"

_SUBMODULES = (
    "attacks",
    "certificates",
    "cli",
    "data",
    "defenses",
    "distributed",
    "evaluate",
    "losses",
    "models",
    "report",
    "testing",
    "training",
    "verify",
)

__all__ = ["ThreatModel", "__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name == "ThreatModel":  # lazy too: the command line picks its allocator before torch loads
        from robustlab.threat import ThreatModel

        globals()[name] = ThreatModel
        return ThreatModel
    if name in _SUBMODULES:
        module = importlib.import_module(f"robustlab.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
