"""Detection, as a library: detectors by name (:data:`DETECTORS`), the attacks they are judged
against (non-adaptive, and adaptive: aware of the detector), and the numbers of one detector on one
attack (detection rate at the fitted threshold, achieved false-positive rate, ROC AUC, evasion).

``robustlab detect`` is this module's loop over detectors x attacks x (plain, adaptive), written
into the report's ``detection`` section (:func:`robustlab.evaluate.sections.detection`). The
adaptive attacks are :class:`robustlab.attacks.KNNFeaturePGD` for kNN detectors (features pulled
toward another class's neighbourhood, Sitawarin & Wagner 2019, arXiv:1903.08333) and
:class:`robustlab.attacks.DetectorAwarePGD` against the detector's differentiable score for the
others (Carlini & Wagner 2017, arXiv:1705.07263); every attack is built through the attack registry.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from robustlab.attacks import registry
from robustlab.registry import Registry


def _squeeze(model: Any, train_images: Any, train_labels: Any, *, seed: int, ae_epochs: int, knn_space: str) -> Any:
    from robustlab.defenses import detect

    return detect.FeatureSqueezing(model)


def _magnet(model: Any, train_images: Any, train_labels: Any, *, seed: int, ae_epochs: int, knn_space: str) -> Any:
    from robustlab.defenses import detect
    from robustlab.defenses.transforms import MagNetAutoencoder, train_autoencoder

    ae = MagNetAutoencoder(train_images.shape[1], hidden=8 if train_images.shape[1] == 1 else 16, seed=seed)
    dev = next(iter(model.parameters())).device
    ae = train_autoencoder(ae.to(dev), train_images.to(dev), epochs=ae_epochs, batch_size=64, lr=3e-3, seed=seed)
    return detect.MagNetDetector(ae)


def _knn(model: Any, train_images: Any, train_labels: Any, *, seed: int, ae_epochs: int, knn_space: str) -> Any:
    from robustlab.defenses import detect

    return detect.KNNDetector(model, (train_images, train_labels), k=10, space=knn_space)


def _lid(model: Any, train_images: Any, train_labels: Any, *, seed: int, ae_epochs: int, knn_space: str) -> Any:
    from robustlab.defenses import detect

    return detect.LID(model, train_images[:500], k=20)


#: Every detector by name (:class:`robustlab.registry.Registry`): a builder ``(model, train_images,
#: train_labels, *, seed, ae_epochs, knn_space) -> Detector`` (not yet fitted).
DETECTORS: Registry[Callable[..., Any]] = Registry("detector")
DETECTORS.register("squeeze", _squeeze, "feature squeezing: bit depth and median filter, L1 score (Xu et al. 2018)")
DETECTORS.register("magnet", _magnet, "MagNet: an auto-encoder's reconstruction error (Meng & Chen 2017)")
DETECTORS.register("knn", _knn, "kNN: disagreement of the nearest training features with the prediction")
DETECTORS.register("lid", _lid, "local intrinsic dimensionality of the activations (Ma et al. 2018)")

#: The attacks a detector is judged against (each also in an adaptive form).
DETECTION_ATTACKS = ("fgsm", "pgd", "cw-l2")


def build_detector(name: str, model: Any, train_images: Any, train_labels: Any, *, seed: int = 0,
                   ae_epochs: int = 5, knn_space: str = "feature") -> Any:
    """A detector by name, built on training data (not yet fitted)."""
    return DETECTORS.get(name, model, train_images, train_labels, seed=seed, ae_epochs=ae_epochs, knn_space=knn_space)


def make_attack(name: str, eps: float, *, detector: Any = None, steps: int = 40, l2_eps: float = 3.0, seed: int = 0) -> Any:
    """The non-adaptive attack (``detector`` None) or its adaptive version: ``fgsm`` is one step of
    :class:`~robustlab.attacks.DetectorAwarePGD` of size ``eps``; ``pgd`` ``steps`` steps in the
    linf ball and ``cw-l2`` ``steps`` steps in the L2 ball of radius ``l2_eps``, of
    :class:`~robustlab.attacks.KNNFeaturePGD` for a kNN detector (the features pulled into another
    class's neighbourhood) and of DetectorAwarePGD for the others. On a kNN detector one
    feature-space step overshoots: on the MNIST cnn at linf 0.3 it evaded 9.0% of the images, the
    detector-aware step (on the CW margin while the score is below the threshold) 23.5%
    (docs/benchmarks/defenses.md)."""
    from robustlab.defenses.detect import KNNDetector
    from robustlab.threat import ThreatModel

    tm, l2 = ThreatModel("linf", eps), ThreatModel("l2", l2_eps)
    if detector is None:
        if name == "fgsm":
            return registry.get("fgsm", tm)
        if name == "pgd":
            return registry.get("pgd", tm, steps=steps, seed=seed)
        # Adam step 0.1: at the default 1e-2, 100 steps leave MNIST's saturated 0/1 pixels nearly
        # frozen in tanh space (31% success on the standard cnn; 100% at 0.1, docs/benchmarks/defenses.md)
        return registry.get("cw-l2", "l2", steps=100, binary_search_steps=5, initial_const=0.1, step_size=0.1,
                            seed=seed)
    if isinstance(detector, KNNDetector) and name != "fgsm":
        return registry.get("knn-feature-pgd", tm if name == "pgd" else l2, detector=detector, steps=steps, seed=seed)
    if name == "fgsm":
        return registry.get("detector-aware-pgd", tm, detector=detector, steps=1, step_size=eps, random_start=False,
                            seed=seed)
    return registry.get("detector-aware-pgd", tm if name == "pgd" else l2, detector=detector, steps=steps, seed=seed)


def run_attack(model: Any, attack: Any, x: Any, y: Any, *, batch_size: int = 100) -> tuple[Any, float]:
    """``(AttackResult on all of x, seconds)``, batch by batch."""
    from robustlab.attacks import AttackResult

    t0 = time.perf_counter()
    res = AttackResult.concat([attack.attack(model, xb, yb) for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    return res, time.perf_counter() - t0


def detection_record(detector: Any, res: Any, x: Any, *, batch_size: int = 100) -> dict:
    """Detection numbers of a fitted ``detector`` on an attack's result ``res`` for clean inputs ``x``:
    detection rate / ROC AUC over the successful adversarial examples of correctly classified
    inputs (vs their clean versions), and the evasion rate (misclassified and not flagged, as a
    share of the correctly classified inputs)."""
    import torch

    from robustlab.defenses.detect import detection_metrics

    found = res.success & res.clean_correct
    record: dict = {"n": int(res.success.numel()), "clean_accuracy": float(res.clean_correct.float().mean()),
                    "attack_success": int(found.sum()), "n_correct": int(res.clean_correct.sum())}
    with torch.no_grad():
        flagged = torch.cat([detector.flag(c) for c in res.x_adv.split(batch_size)])
    record["evaded"] = int((found & ~flagged).sum())
    record["evasion_rate"] = record["evaded"] / max(record["n_correct"], 1)
    if int(found.sum()) == 0:
        record.update(detection_rate=None, auc=None, fpr=None, roc=None)
        return record
    record.update(detection_metrics(detector, x[res.clean_correct], res.x_adv[found], batch_size=batch_size))
    return record


def evaluate_detector(detector: Any, model: Any, attack: Any, x: Any, y: Any, *, batch_size: int = 100) -> dict:
    """Attack ``model`` on (x, y) and measure ``detector`` (fitted) on the result."""
    res, seconds = run_attack(model, attack, x, y, batch_size=batch_size)
    record = detection_record(detector, res, x, batch_size=batch_size)
    record.update(attack=attack.name, config=attack.config(), seconds=seconds)
    return record


