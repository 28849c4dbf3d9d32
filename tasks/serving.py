"""The served model: one MLflow pyfunc that turns raw uint8 images into labels and probabilities.

It wraps one architecture or an ensemble of them. Everything it needs travels with the model: a
bundle folder (`manifest.json` + one `state_dict` per member, loaded with `weights_only=True`) and,
through `code_paths`, the `models/` package and this file. It imports neither Prefect nor the rest
of `tasks/`, so `mlflow.pyfunc.load_model("models:/NAME@staging")` and `mlflow models serve` work
in a fresh process that has only torch, numpy, pandas and mlflow.

The same `preprocess` is used by `tasks.evaluate`, so what is served is what was measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # the pyfunc base class; evaluate and ensemble use this module without it being needed
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- preprocessing


def as_nhwc(images: Any) -> np.ndarray:
    """A batch of images as a 4-d NHWC array: accepts NHWC, NHW (grey) and a single HWC image."""
    array = np.asarray(images)
    if array.ndim == 2:  # one grey image
        array = array[None, :, :, None]
    elif array.ndim == 3:
        # HWC with a small channel axis is one colour image; otherwise a batch of grey images.
        array = array[None] if array.shape[-1] in (1, 3, 4) and array.shape[0] > 4 else array[..., None]
    if array.ndim != 4:
        raise ValueError(f"expected a batch of images N x H x W x C, got shape {array.shape}")
    return array


def preprocess(images: Any, image_size: int, channels: int, mean: list[float], std: list[float]) -> Tensor:
    """Raw images (uint8 N x H x W x C, any H x W) -> normalised float N x C x S x S, on the CPU.

    Resizes (bilinear, antialiased) to `image_size`, converts grey <-> RGB to `channels`, scales to
    [0, 1] and standardises with the training split's per-channel `mean` and `std`.
    """
    array = as_nhwc(images)
    if not array.flags.writeable or not array.flags.c_contiguous:  # a memory-mapped split: copy the batch
        array = np.array(array)
    x = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    if array.dtype == np.uint8 or (x.numel() and x.max() > 1.0 + 1e-6):  # floats in [0, 1] stay as they are
        x = x / 255.0
    if x.shape[1] == 4:  # RGBA: drop alpha
        x = x[:, :3]
    if x.shape[1] != channels:
        if channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        else:
            x = x.expand(-1, channels, -1, -1)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------- weights


def build_member(member: dict[str, Any], bundle: Path) -> nn.Module:
    import models  # shipped beside this file through code_paths

    model = models.build(member["arch"], **member["build_kwargs"])
    state = torch.load(bundle / member["weights"], map_location="cpu", weights_only=True)
    # Plain load_state_dict: a model whose state is sized by its data (a kNN's memory) is a
    # models.FittedClassifier, which takes the saved shapes itself.
    model.load_state_dict(state)
    return model.eval()


# --------------------------------------------------------------------------- combining members (one place:
# tasks.ensemble fits the weights with these, the served model applies them)


def soft_vote(probs: np.ndarray, weights: Any = None) -> np.ndarray:
    """probs: members x N x K. The (weighted) mean of the members' probabilities."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), probs, axes=1)


def hard_vote(probs: np.ndarray, weights: Any = None) -> np.ndarray:
    """Majority vote of the members' top-1 labels, as per-class vote shares; a tie between classes
    goes to the one with the higher mean probability."""
    m, n, k = probs.shape
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    votes = np.zeros((n, k))
    for wi, p in zip(w, probs):
        votes[np.arange(n), p.argmax(1)] += wi
    scores = votes + 1e-6 * soft_vote(probs, w)
    return scores / scores.sum(1, keepdims=True)


def vote(kind: str, probs: np.ndarray, weights: Any = None) -> np.ndarray:
    """Members' probabilities (members x N x K) -> the ensemble's, by `kind` "soft" or "hard" voting."""
    return hard_vote(probs, weights) if kind == "hard" else soft_vote(probs, weights)


class ZooClassifier(PythonModel):
    """pyfunc: uint8 images N x H x W x C -> DataFrame(label, class_name, probabilities)."""

    def load_context(self, context) -> None:
        self.load_bundle(Path(context.artifacts["bundle"]))

    def load_bundle(self, bundle: Path) -> ZooClassifier:
        manifest = json.loads((Path(bundle) / MANIFEST).read_text())
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"model bundle format {manifest.get('format')!r}; this code reads {BUNDLE_FORMAT}")
        self.manifest = manifest
        self.members = [build_member(m, Path(bundle)) for m in manifest["members"]]
        return self

    @torch.inference_mode()
    def predict_proba(self, images: Any, batch_size: int = 256) -> np.ndarray:
        m = self.manifest
        out = []
        array = as_nhwc(images)
        for start in range(0, len(array), batch_size):
            x = preprocess(array[start : start + batch_size], m["image_size"], m["channels"], m["mean"], m["std"])
            probs = np.stack([torch.softmax(model(x).float(), dim=1).double().numpy() for model in self.members])
            weights = [member["weight"] for member in m["members"]]
            out.append(vote(m.get("vote", "soft"), probs, weights))
        return np.concatenate(out) if out else np.zeros((0, len(m["classes"])), dtype=np.float32)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):  # a served JSON of records: one column of images
            model_input = np.stack([np.asarray(v) for v in model_input.iloc[:, 0]])
        if isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        probs = self.predict_proba(model_input)
        labels = probs.argmax(1)
        classes = self.manifest["classes"]
        return pd.DataFrame(
            {
                "label": labels.astype(np.int64),
                "class_name": [str(classes[i]) for i in labels],
                "probabilities": [row.astype(np.float64).tolist() for row in probs],
            }
        )
