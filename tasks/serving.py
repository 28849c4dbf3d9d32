"""The served model: one MLflow pyfunc that turns raw uint8 images into labels and probabilities.

It wraps one architecture or an ensemble of them. Everything it needs travels with the model: a
bundle folder (`manifest.json` + one `state_dict` per member, loaded with `weights_only=True`) and,
through `code_paths`, the `models/` package, this file and `tasks/decode.py` (numpy and PIL only). It
imports neither Prefect nor the rest of `tasks/`, so `mlflow.pyfunc.load_model("models:/NAME@staging")`
and `mlflow models serve` work in a fresh process that has only torch, numpy, pandas, Pillow and mlflow.

The input contract (`as_nhwc`): a batch of uint8 images, N x H x W x C with C = 1 or 3, or N x H x W
(grey), any H x W; over JSON, integers 0..255. Anything else, floats included, is refused with one
line naming what was expected and what came. An image is converted and resized exactly as ingest
prepared the training data (`tasks.decode.conform`: PIL, bicubic, antialiased), and `tasks.evaluate`
measures through the same `preprocess`: what is served is what was measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tasks.decode import conform

try:  # the pyfunc base class; evaluate and ensemble use this module without it being needed
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]
    MlflowException = None  # type: ignore[assignment,misc]

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
CONTRACT = "uint8 images N x H x W x C with C = 1 or 3 (or N x H x W, grey), pixel values 0..255"


# --------------------------------------------------------------------------- the input contract


class InputError(*((MlflowException, ValueError) if MlflowException else (ValueError,))):
    """A request the model does not take, in one line. Under MLflow it is a 400 (INVALID_PARAMETER_VALUE).

    MLflow's scoring server rewrites a model's error to `Failed to predict data '<the whole input
    array>'. Error: ...`; this error keeps its own line (assigning `message` leaves it as it is)."""

    def __init__(self, text: str):
        self._text = text
        if MlflowException:
            super().__init__(text, error_code=INVALID_PARAMETER_VALUE)
        else:  # pragma: no cover
            super().__init__(text)

    message = property(lambda self: self._text, lambda self, value: None)


def as_nhwc(images: Any) -> np.ndarray:
    """The batch as uint8 N x H x W x C, checked against the contract; InputError names what is wrong."""
    try:
        array = np.asarray(images)
    except ValueError:  # ragged nested lists
        raise InputError(f"expected {CONTRACT}, all of one size in a request; got images of different "
                         f"sizes or shapes") from None
    got = f"got {array.dtype} of shape {array.shape}"
    if array.ndim == 3:  # a batch of grey images without a channel axis
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or 0 in array.shape[1:3]:
        raise InputError(f"expected {CONTRACT}; {got}")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":  # JSON integers arrive as int64
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise InputError(f"expected {CONTRACT}; {got} with values in [{low}, {high}]")
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        raise InputError(f"expected {CONTRACT}; {got} with values in [{low:g}, {high:g}]: floats are not "
                         f"taken as pixels (scale to 0..255 and round to uint8)")
    raise InputError(f"expected {CONTRACT}; {got}")


def preprocess(images: Any, image_size: int, channels: int, mean: list[float], std: list[float]) -> Tensor:
    """Raw images (the contract of `as_nhwc`, any H x W) -> normalised float N x C x S x S, on the CPU.

    Converts to `channels` and resizes to `image_size` as ingest did (`tasks.decode.conform`), scales
    to [0, 1] and standardises with the training split's per-channel `mean` and `std`.
    """
    from PIL import Image

    array = as_nhwc(images)
    if array.shape[1:] != (image_size, image_size, channels):
        conformed = [conform(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im), image_size, channels)
                     for im in array]
        array = np.stack(conformed) if conformed else np.zeros((0, image_size, image_size, channels), np.uint8)
    elif not array.flags.writeable or not array.flags.c_contiguous:  # a memory-mapped split: copy the batch
        array = np.array(array)
    x = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
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
    """pyfunc: uint8 images (`as_nhwc`) -> DataFrame(label, class_name, probabilities)."""

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
            model_input = [np.asarray(v) for v in model_input.iloc[:, 0]]
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
