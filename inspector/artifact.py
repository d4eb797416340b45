"""The model artifact: a directory with `model.json` (everything needed to rebuild and use the model)
and `weights.pt` (a plain state dict, loaded with weights_only=True)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from . import __version__
from .model import build_model, output_kind
from .preprocess import Contrast, Fit, Preparation
from .scoring import Reduction, make_reduction, reduction_output

META_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
FORMAT = "inspector.model"
FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """What the model takes: size, channels and how pixels are scaled."""

    height: int = Field(ge=8, description="Input height in pixels.")
    width: int = Field(ge=8, description="Input width in pixels.")
    channels: Literal[1, 3] = Field(description="1 grayscale, 3 BGR.")
    scale: float = Field(255.0, description="uint8 pixels are divided by this, giving [0, 1].")
    resize: Literal["area"] = Field("area", description="Interpolation used to resize frames to the input size.")
    fit: Fit = Field(
        "stretch", description="A frame of another aspect is stretched to the input size, or (pad) resized to fit "
                               "inside it with its aspect kept, the margins its reflected edges.")
    contrast: Contrast = Field(
        "none", description="stretch: each resized frame's 1st to 99th percentile grey levels are stretched to 0-255; "
                            "none: grey levels as captured.")

    def preparation(self) -> Preparation:
        """How images are prepared for this model, as keyword arguments of `dataset.load_folder` and `load_files`
        (the daemon's worker reads the same fields)."""
        return {"fit": self.fit, "contrast": self.contrast}


class ScoreSpec(_Strict):
    """How the error map is reduced to one score."""

    reduction: str = Field(description="Name of the score reduction (see inspector.scoring).")
    params: dict[str, float] = Field(default_factory=dict, description="Parameters of the reduction.")


class ThresholdSpec(_Strict):
    """The decision threshold and how it was chosen."""

    value: float = Field(description="Scores at or above this are anomalies.")
    method: str = Field(
        description="How it was chosen: good_quantile, best_f1, target_false_reject, two_modes, manual."
    )
    details: dict[str, Any] = Field(default_factory=dict, description="Method inputs and outcomes.")


class CalibrationStats(_Strict):
    """The good-score distribution the threshold was chosen on."""

    count: int = Field(ge=0, description="Number of good images scored.")
    mean: float = Field(description="Mean good score.")
    std: float = Field(description="Standard deviation of good scores.")
    min: float = Field(description="Smallest good score.")
    max: float = Field(description="Largest good score.")
    quantiles: dict[str, float] = Field(default_factory=dict, description="Good-score quantiles keyed by level.")


class ModelMeta(_Strict):
    """Contents of model.json."""

    format: Literal["inspector.model"] = Field(description="Marks the directory as an inspector model.")
    format_version: int = Field(description="Version of this metadata layout.")
    name: str = Field(description="Model name.")
    created_at: str = Field(description="When the weights were written (ISO 8601, UTC).")
    inspector_version: str = Field(description="inspector version that wrote the artifact.")
    family: str = Field(description="Model family (see inspector.model.FAMILIES).")
    output: Literal["reconstruction", "anomaly_map"] = Field(
        "reconstruction", description="What the module returns: the reconstruction (B, C, H, W) of its input, or "
                                      "an anomaly map (B, 1, H, W) in [0, 1]; heatmaps show the squared error or "
                                      "the map.")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Family hyper-parameters.")
    input: InputSpec = Field(description="Input size, channels, normalisation.")
    score: ScoreSpec = Field(description="Score reduction.")
    threshold: ThresholdSpec = Field(description="Decision threshold.")
    calibration: CalibrationStats | None = Field(None, description="Good-score statistics.")
    data: dict[str, Any] = Field(default_factory=dict, description="Training data summary: count, content hash.")
    training: dict[str, Any] = Field(default_factory=dict, description="Training settings, time and outcome.")
    weights_sha256: str = Field(description="SHA-256 of weights.pt, to catch truncated or swapped files.")


class ArtifactError(Exception):
    """A model directory that is missing, incomplete, inconsistent or not a model."""


@dataclass
class Artifact:
    """A loaded model: its metadata and its module in eval mode (on the CPU until moved)."""

    path: Path
    meta: ModelMeta
    module: nn.Module

    @property
    def label(self) -> str:
        """name/version, as published with each verdict."""
        return f"{self.meta.name}/{self.meta.weights_sha256[:12]}"

    def reduction(self) -> Reduction:
        """The calibrated score reduction."""
        return make_reduction(self.meta.score.reduction, self.meta.score.params)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(path: Path) -> ModelMeta:
    """Read and validate model.json of a model directory."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a model directory (expected a folder with {META_FILE} and {WEIGHTS_FILE})")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{meta_path}: missing; {path} is not an inspector model")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not an inspector model (no \"format\": \"{FORMAT}\")")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{meta_path}: format_version {raw.get('format_version')!r} is not supported (this inspector reads "
            f"{FORMAT_VERSION})"
        )
    try:
        return ModelMeta.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{meta_path}: invalid metadata: {loc}: {first['msg']}") from None


def load_artifact(path: Path) -> Artifact:
    """Load a model directory, checking metadata, weight file integrity and that the weights fit."""
    path = Path(path)
    meta = read_meta(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights}: missing")
    if sha256_file(weights) != meta.weights_sha256:
        raise ArtifactError(f"{weights}: checksum does not match {META_FILE} (truncated, corrupt or replaced)")
    try:
        make_reduction(meta.score.reduction, meta.score.params)
        if output_kind(meta.family) != meta.output or reduction_output(meta.score.reduction) != meta.output:
            raise ValueError(f"family {meta.family!r} and score reduction {meta.score.reduction!r} do not fit "
                             f"output {meta.output!r}")
        module = build_model(meta.family, meta.input.channels, meta.input.height, meta.input.width, **meta.hparams)
    except ValueError as exc:
        raise ArtifactError(f"{path / META_FILE}: {exc}") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        raise ArtifactError(f"{weights}: not a readable state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{weights}: not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0]
        raise ArtifactError(f"{weights}: weights do not fit the model described in {META_FILE}: {summary}") from None
    module.eval()
    return Artifact(path=path, meta=meta, module=module)


def save_artifact(path: Path, module: nn.Module, meta: dict[str, Any]) -> Artifact:
    """Write weights and metadata (filling format, version and checksum); returns the loaded artifact."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = path / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    torch.save(state, tmp)
    tmp.replace(weights)
    full = dict(meta)
    full.update(format=FORMAT, format_version=FORMAT_VERSION, inspector_version=__version__,
                weights_sha256=sha256_file(weights))
    validated = ModelMeta.model_validate(full)
    write_meta(path, validated)
    return load_artifact(path)


def write_meta(path: Path, meta: ModelMeta) -> None:
    """Write model.json atomically (used by calibrate to update the threshold)."""
    meta_path = Path(path) / META_FILE
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(meta_path)
