"""The daemon's configuration: pydantic models for every section, loaded from one TOML file.

Loading validates; it never opens a camera, loads weights or binds a socket.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSource(Section):
    """Rendered parts with a set rate of defects and their ground truth (for demos, tests, benchmarks)."""

    type: Literal["synthetic"] = Field(description="Source type.")
    fps: float = Field(
        10.0, ge=0, description="Frames per second; 0 means as fast as possible (the ring drops what the worker "
        "cannot take)."
    )
    width: int = Field(256, ge=32, le=8192, description="Image width in pixels.")
    height: int = Field(256, ge=32, le=8192, description="Image height in pixels.")
    channels: Literal[1, 3] = Field(1, description="1 for grayscale, 3 for colour (BGR).")
    defect_rate: float = Field(0.05, ge=0, le=1, description="Share of parts rendered with a defect.")
    seed: int = Field(0, description="Random seed; the same seed gives the same parts.")
    bank_size: int = Field(
        64, ge=1, le=4096,
        description="Parts rendered at open and then cycled, so rendering costs nothing per frame; "
        "1..4096.",
    )
    count: int | None = Field(None, ge=1, description="Stop after this many frames (None: never stop).")


class ReplaySource(Section):
    """A folder of images (optionally laid out as good/ and defect/) or a video file, at a set rate."""

    type: Literal["replay"] = Field(description="Source type.")
    path: Path = Field(description="Folder of images or a video file; relative to the config file.")
    fps: float = Field(
        10.0, ge=0, description="Frames per second; 0 means as fast as possible (the ring drops what the worker "
        "cannot take)."
    )
    loop: bool = Field(False, description="Start again at the end instead of finishing.")


class OpenCVSource(Section):
    """A camera or stream through OpenCV: device index, device path, video file, URL or GStreamer pipeline."""

    type: Literal["opencv"] = Field(description="Source type.")
    source: int | str = Field(
        description="Device index (0), device path (/dev/video0), file, URL (rtsp://...) or GStreamer pipeline."
    )
    backend: Literal["any", "ffmpeg", "v4l2", "gstreamer"] = Field(
        "any", description="OpenCV capture back-end to use."
    )
    open_timeout_ms: int = Field(5000, ge=100, description="Open timeout, where the back-end supports one.")
    read_timeout_ms: int = Field(5000, ge=100, description="Read timeout, where the back-end supports one.")
    width: int | None = Field(None, ge=1, description="Requested capture width (device sources).")
    height: int | None = Field(None, ge=1, description="Requested capture height (device sources).")
    fps: float | None = Field(
        None, gt=0,
        description="Requested device frame rate; for files, frames are paced at this rate when set.",
    )


class GenICamSettings(Section):
    """Settings shared by the GenICam back-ends (Aravis, pylon)."""

    pixel_format: str | None = Field(
        "Mono8", description="GenICam PixelFormat (Mono8, BayerRG8, RGB8, ...); None keeps the camera's."
    )
    exposure_us: float | None = Field(None, gt=0, description="ExposureTime in microseconds; None keeps the camera's.")
    gain_db: float | None = Field(None, description="Gain in dB; None keeps the camera's.")
    frame_rate: float | None = Field(
        None, gt=0, description="AcquisitionFrameRate in free run; None keeps the camera's."
    )
    trigger_source: str | None = Field(
        None, description="TriggerSource for hardware-triggered acquisition (e.g. Line1); None: free run."
    )
    width: int | None = Field(None, ge=1, description="Sensor region width; None keeps the camera's.")
    height: int | None = Field(None, ge=1, description="Sensor region height; None keeps the camera's.")
    offset_x: int | None = Field(None, ge=0, description="Sensor region left edge (OffsetX); None keeps the camera's.")
    offset_y: int | None = Field(None, ge=0, description="Sensor region top edge (OffsetY); None keeps the camera's.")
    buffers: int = Field(8, ge=2, le=256, description="Stream buffers queued to the driver.")
    timeout_ms: int = Field(2000, ge=10, description="Longest wait for one frame before the read fails.")


class AravisSource(GenICamSettings):
    """A GenICam camera (GigE Vision or USB3 Vision) through Aravis."""

    type: Literal["aravis"] = Field(description="Source type.")
    device: str | None = Field(
        None,
        description="Aravis device id (as `arv-tool-0.8` lists it), serial or IP address; None: the first found.",
    )
    interfaces: list[Literal["GigEVision", "USB3Vision", "Fake"]] | None = Field(
        None, description="Aravis interfaces to search; None: Aravis's defaults. Fake is Aravis's simulated camera."
    )
    packet_size: int | None = Field(None, ge=576, description="GigE Vision packet size; None: negotiated.")


class PylonSource(GenICamSettings):
    """A Basler camera through pypylon (GigE, USB3; PYLON_CAMEMU=N adds emulated cameras)."""

    type: Literal["pylon"] = Field(description="Source type.")
    serial: str | None = Field(None, description="Camera serial number; None: the first found.")


SourceConfig = Annotated[
    Union[SyntheticSource, ReplaySource, OpenCVSource, AravisSource, PylonSource], Field(discriminator="type")
]


SOURCE_TYPES = ("synthetic", "replay", "opencv", "aravis", "pylon")


class CameraConfig(Section):
    """One camera: its source, the model that inspects it, and how its failures are handled."""

    id: str = Field(description="Camera id, used in topics, metrics and logs ([A-Za-z0-9_-]+).")
    source: SourceConfig = Field(description="Where frames come from; `type` picks the back-end.")
    model: Path = Field(description="Model directory (model.json + weights); relative to the config file.")
    roi: tuple[int, int, int, int] | None = Field(
        None, description="Region of interest [x, y, width, height] in pixels, cropped before the model."
    )
    stall_timeout_s: float = Field(
        10.0, gt=0, description="A camera that delivers no frame for this long is declared stalled and reconnected."
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay; doubles after each failure.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")

    @field_validator("id")
    @classmethod
    def _id_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError("must be 1-64 characters of letters, digits, '_' or '-'")
        return value

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None and (value[0] < 0 or value[1] < 0 or value[2] < 1 or value[3] < 1):
            raise ValueError("x and y must be >= 0, width and height >= 1")
        return value


class BufferConfig(Section):
    """The bounded ring between each camera and the worker."""

    capacity: int = Field(16, ge=1, le=4096, description="Frames held per camera.")
    policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest",
        description="Which frame is dropped when the ring is full; the dropped part gets the not-inspected verdict.",
    )


class WorkerConfig(Section):
    """The batched inference worker (one per model)."""

    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 on CUDA; on the CPU bf16 for anomaly-map models (draem) where the CPU "
                            "computes it natively (AVX512-BF16 or AMX) and a start-up probe finds it at least 1.1x "
                            "as fast as fp32 (1.5-2x where it pays; scores within about 1% of fp32's), else fp32 "
                            "(reconstruction scores moved by up to 3% in bf16). `inspector train` and `calibrate` set "
                            "thresholds in auto's arithmetic; with another value, re-run "
                            "`inspector calibrate --precision` with it."
    )
    max_batch: int = Field(
        8, ge=1, le=1024, description="Most frames run through the model at once (on CUDA with `jit`, a batch is "
                                      "padded up to a power of two or max_batch, each size compiled at start-up; "
                                      "for patchcore on the CPU, to every size up to 8, then the same).")
    max_wait_ms: float = Field(5.0, ge=0, description="Longest wait for a batch to fill after its first frame.")
    deadline_ms: float = Field(
        1000.0, gt=0, description="A verdict not publishable within this time of capture becomes the fail-safe one."
    )
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 leaves torch's default.")
    jit: bool = Field(
        True,
        description="Trace and freeze the model with TorchScript at start-up: the forward runs without returning "
        "to Python between layers (faster, less disturbed by the capture threads); falls back to eager on failure "
        "(TorchScript is deprecated by PyTorch but present in 2.x). patchcore on the CPU is not traced whole: its "
        "trunk runs oneDNN-fused with or without `jit`, as training calibrated it.",
    )
    drain_timeout_s: float = Field(5.0, ge=0, description="At shutdown, how long to keep inspecting buffered frames.")

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


class ScoringConfig(Section):
    """How an error map becomes a verdict (defaults come from the model artifact)."""

    reduction: Literal["model", "mse", "diff_std", "smoothed_max", "topk_mean", "map_max", "map_topk",
                       "map_topk_or_mean", "map_peaks"] = Field(
        "model", description="Score reduction; `model` uses the one the model was calibrated with (the map_* "
        "reductions read an anomaly-map model such as draem or patchcore; the others a reconstruction)."
    )
    threshold: float | None = Field(
        None, description="Override the model's threshold; required when `reduction` differs from the model's."
    )
    not_inspected_verdict: Literal["reject", "accept"] = Field(
        "reject",
        description="Verdict for parts that could not be inspected (dropped, late, failed); `accept` is fail-open.",
    )


class PublisherConfig(Section):
    """The ZeroMQ PUB socket that sends verdicts and heartbeats."""

    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint to bind (tcp://..., ipc://...).")
    heartbeat_s: float = Field(1.0, gt=0, description="Seconds between heartbeat messages.")
    sndhwm: int = Field(100_000, ge=1, description="Messages queued per subscriber before ZeroMQ drops for it.")
    linger_ms: int = Field(1000, ge=0, description="How long close() tries to deliver queued messages.")
    max_pending: int = Field(
        100_000, ge=1,
        description="Verdicts waiting for the publisher thread, at most; beyond it they are counted in "
        "inspector_publish_overflow_total and logged (bounds memory if the publisher falls behind).",
    )
    wait_for_subscribers: int = Field(
        0, ge=0, description="Before cameras start, wait for this many subscriptions (e.g. the reject actuator)."
    )
    wait_for_subscribers_s: float = Field(
        10.0, ge=0, description="Longest wait for those subscriptions; the daemon then starts anyway, with a warning."
    )
    publish_images: bool = Field(
        False,
        description="Also publish the frame and heatmap of each verdict the archive selects (`archive.rejects`, "
        "`archive.accept_sample`) as `[image.<verdict>.<camera>, payload, frame, heatmap]` on this socket, for "
        "`inspector listen --save`; works with `archive.enabled` off (nothing written on this host).",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint_scheme(cls, value: str) -> str:
        if not re.fullmatch(r"(tcp|ipc|inproc)://.+", value):
            raise ValueError("must start with tcp://, ipc:// or inproc://")
        return value


class ArchiveConfig(Section):
    """The reject archive: frames, heatmaps and verdict messages saved for review and retraining."""

    enabled: bool = Field(False, description="Write the archive on this host (its own thread, off the hot path).")
    directory: Path = Field(
        Path("archive"),
        description="Where it is written, as DIR/<YYYY-MM-DD>/<camera>/ (UTC date); relative to the config file. "
        "Under systemd: /var/lib/inspector/archive (the state directory).",
    )
    rejects: bool = Field(True, description="Save every reject, whatever its reason (fail-safe ones included).")
    accept_sample: float = Field(
        0.0, ge=0, le=1,
        description="Share of accepts saved, per camera, evenly spread (0.01: every 100th accept); 0 saves none.",
    )
    max_items: int = Field(10_000, ge=1, description="Most entries kept; the oldest are deleted first.")
    max_megabytes: float = Field(2000.0, gt=0, description="Most disk space kept, in MB; the oldest go first.")
    queue: int = Field(
        64, ge=1, le=100_000,
        description="Entries waiting to be written, at most; beyond it an entry is dropped and counted in "
        "inspector_archive_dropped_total (never a frame or a verdict).",
    )
    image_format: Literal["png", "jpg"] = Field(
        "png", description="Encoding of the frame and heatmap: png (lossless) or jpg (smaller)."
    )


class MetricsConfig(Section):
    """The Prometheus endpoint."""

    enabled: bool = Field(True, description="Serve /metrics over HTTP.")
    address: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(9108, ge=0, le=65535, description="Port to listen on (0 picks a free one).")


class LoggingConfig(Section):
    """Structured logs."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON lines otherwise (journald)."
    )


class Config(Section):
    """The whole daemon configuration."""

    cameras: list[CameraConfig] = Field(min_length=1, description="The cameras to inspect.")
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="Ring buffer settings.")
    worker: WorkerConfig = Field(default_factory=WorkerConfig, description="Inference worker settings.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Scoring and fail-safe settings.")
    publisher: PublisherConfig = Field(default_factory=PublisherConfig, description="ZeroMQ publisher settings.")
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig, description="Reject archive settings.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus settings.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging settings.")

    @model_validator(mode="after")
    def _unique_camera_ids(self) -> Config:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique; repeated: {', '.join(dupes)}")
        return self


class ConfigError(Exception):
    """A config file that cannot be read or does not validate; the message names file and field."""


def load_config(path: Path) -> Config:
    """Read and validate a TOML config; relative paths inside are resolved against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, text, exc)) from None
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: Config, base: Path) -> Config:
    cameras = []
    for cam in config.cameras:
        update: dict[str, object] = {"model": (base / cam.model).resolve()}
        if isinstance(cam.source, ReplaySource):
            update["source"] = cam.source.model_copy(update={"path": (base / cam.source.path).resolve()})
        cameras.append(cam.model_copy(update=update))
    archive = config.archive.model_copy(update={"directory": (base / config.archive.directory).resolve()})
    return config.model_copy(update={"cameras": cameras, "archive": archive})


def _describe(path: Path, text: str, exc: ValidationError) -> str:
    lines = [f"{path}: invalid config ({exc.error_count()} error{'s' if exc.error_count() > 1 else ''})"]
    for err in exc.errors():
        loc = _dotted(err["loc"])
        line = _find_line(text, err["loc"])
        where = f" (line {line})" if line else ""
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}{where}: {msg}")
    return "\n".join(lines)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in SOURCE_TYPES and out.endswith("source"):
            continue  # pydantic's discriminator tag, not a key the user wrote
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _find_line(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best effort: the line of the last key named in loc, counting only the array item it sits in."""
    keys = [p for p in loc if isinstance(p, str) and p not in SOURCE_TYPES]
    if not keys:
        return None
    key = keys[-1]
    index = next((p for p in loc if isinstance(p, int)), None)
    table = keys[0] if index is not None else None
    item = -1
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if table and re.fullmatch(rf"\[\[\s*{re.escape(table)}\s*\]\]", stripped):
            item += 1
        if index is not None and item != index:
            continue
        if re.match(rf"{re.escape(key)}\s*=", stripped) or re.fullmatch(rf"\[.*\b{re.escape(key)}\]", stripped):
            return number
    return None
