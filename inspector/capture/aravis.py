"""`aravis` source: GigE Vision and USB3 Vision cameras (and Aravis's simulated one) through Aravis.

PyGObject and Aravis's introspection data are imported when a camera is opened, not when this module is, so a
machine without them keeps the camera down and retrying with the reason logged (see docs/cameras.md).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np
import structlog

from ..config import AravisSource
from ..types import FrameLost, Grab, NoFrame

INSTALL_HINT = (
    "install Aravis and PyGObject: apt-get install gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev "
    "pkg-config, then pip install 'PyGObject<3.51' (see docs/cameras.md)"
)
INTERFACES = ("GigEVision", "USB3Vision", "Fake")
DEFAULT_INTERFACES = ("GigEVision", "USB3Vision")  # what Aravis enables on its own

# Aravis keeps the enabled interfaces and the device list process-wide: one camera at a time selects, lists and
# opens, so two cameras opening at once cannot see each other's interface choice.
_DISCOVERY = threading.Lock()


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """How one GenICam pixel format lies in a buffer and how it becomes uint8 gray or BGR."""

    name: str
    channels: int  # values per pixel in the buffer (1 for mono and Bayer, 2 for YUV 4:2:2, 3 or 4 for RGB)
    itemsize: int  # bytes per value: 1, or 2 for 10..16-bit formats (little-endian, unpacked)
    shift: int  # right shift that brings a value to 8 bits
    cvt: int | None  # cv2.cvtColor code to BGR, None when already gray or BGR


def _bayer(name: str, pfnc: int, pattern: str, bits: int) -> tuple[int, PixelLayout]:
    # cv2's four-letter Bayer codes name the pattern's top-left 2x2 as GenICam does (cv2's two-letter ones do not)
    code = getattr(cv2, f"COLOR_Bayer{pattern}2BGR")
    return pfnc, PixelLayout(name, 1, 1 if bits == 8 else 2, bits - 8, code)


# GenICam PFNC codes (as in Aravis's ARV_PIXEL_FORMAT_*) of the formats converted here.
PIXEL_FORMATS: dict[int, PixelLayout] = dict([
    (0x01080001, PixelLayout("Mono8", 1, 1, 0, None)),
    (0x01100003, PixelLayout("Mono10", 1, 2, 2, None)),
    (0x01100005, PixelLayout("Mono12", 1, 2, 4, None)),
    (0x01100025, PixelLayout("Mono14", 1, 2, 6, None)),
    (0x01100007, PixelLayout("Mono16", 1, 2, 8, None)),
    _bayer("BayerGR8", 0x01080008, "GRBG", 8), _bayer("BayerRG8", 0x01080009, "RGGB", 8),
    _bayer("BayerGB8", 0x0108000A, "GBRG", 8), _bayer("BayerBG8", 0x0108000B, "BGGR", 8),
    _bayer("BayerGR10", 0x0110000C, "GRBG", 10), _bayer("BayerRG10", 0x0110000D, "RGGB", 10),
    _bayer("BayerGB10", 0x0110000E, "GBRG", 10), _bayer("BayerBG10", 0x0110000F, "BGGR", 10),
    _bayer("BayerGR12", 0x01100010, "GRBG", 12), _bayer("BayerRG12", 0x01100011, "RGGB", 12),
    _bayer("BayerGB12", 0x01100012, "GBRG", 12), _bayer("BayerBG12", 0x01100013, "BGGR", 12),
    _bayer("BayerGR16", 0x0110002E, "GRBG", 16), _bayer("BayerRG16", 0x0110002F, "RGGB", 16),
    _bayer("BayerGB16", 0x01100030, "GBRG", 16), _bayer("BayerBG16", 0x01100031, "BGGR", 16),
    (0x02180014, PixelLayout("RGB8", 3, 1, 0, cv2.COLOR_RGB2BGR)),
    (0x02180015, PixelLayout("BGR8", 3, 1, 0, None)),
    (0x02200016, PixelLayout("RGBa8", 4, 1, 0, cv2.COLOR_RGBA2BGR)),
    (0x02200017, PixelLayout("BGRa8", 4, 1, 0, cv2.COLOR_BGRA2BGR)),
    (0x0210001F, PixelLayout("YUV422_8_UYVY", 2, 1, 0, cv2.COLOR_YUV2BGR_UYVY)),
    (0x02100032, PixelLayout("YUV422_8", 2, 1, 0, cv2.COLOR_YUV2BGR_YUYV)),
])
# Other names cameras use for the same formats.
_ALIASES = {"RGB8Packed": "RGB8", "BGR8Packed": "BGR8", "RGBA8": "RGBa8", "BGRA8": "BGRa8",
            "YUV422Packed": "YUV422_8_UYVY", "YUV422_YUYV_Packed": "YUV422_8"}
SUPPORTED_FORMATS = frozenset([layout.name for layout in PIXEL_FORMATS.values()] + list(_ALIASES))


def to_image(data: bytes | memoryview, width: int, height: int, pixel_format: int, x_padding: int = 0) -> np.ndarray:
    """A buffer's pixels as uint8 (H, W) gray or (H, W, 3) BGR; Mono8 and BGR8 come back as views of `data`."""
    layout = PIXEL_FORMATS.get(pixel_format)
    if layout is None:
        raise OSError(f"pixel format 0x{pixel_format:08x} is not supported (supported: {_supported()})")
    pixel = layout.channels * layout.itemsize
    stride = width * pixel + x_padding
    needed = stride * (height - 1) + width * pixel
    if width < 1 or height < 1 or len(data) < needed:
        raise OSError(f"{layout.name} payload of {len(data)} bytes is too small for {width}x{height} "
                      f"(needs {needed})")
    dtype = np.dtype("<u2") if layout.itemsize == 2 else np.dtype(np.uint8)
    if layout.channels == 1:
        shape: tuple[int, ...] = (height, width)
        strides: tuple[int, ...] = (stride, layout.itemsize)
    else:
        shape, strides = (height, width, layout.channels), (stride, pixel, layout.itemsize)
    image = np.ndarray(shape, dtype, buffer=data, strides=strides)  # (H, W) or (H, W, C), no copy
    if layout.shift:
        image = cv2.convertScaleAbs(image, alpha=1.0 / (1 << layout.shift))  # 10..16 bits -> uint8, saturated
    if layout.cvt is not None:
        image = cv2.cvtColor(image, layout.cvt)  # (H, W, 3) BGR
    return image


def _supported() -> str:
    return ", ".join(layout.name for layout in PIXEL_FORMATS.values())


def load_aravis() -> tuple[Any, type[Exception]]:
    """The Aravis 0.8 module and GLib.Error; OSError with an install hint when PyGObject or Aravis is missing."""
    try:
        import gi
    except ImportError:
        raise OSError(f"the aravis source needs PyGObject, which is not installed: {INSTALL_HINT}") from None
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:
        raise OSError(f"the aravis source needs Aravis 0.8's introspection data ({exc}): {INSTALL_HINT}") from None
    return Aravis, GLib.Error


class AravisCamera:
    """One GenICam camera through Aravis: settings applied at open, frames popped from its stream.

    The camera paces itself (free run at `frame_rate`, or one frame per trigger), so `interval_s` is 0.
    `part_id` is the buffer's frame id (the GigE Vision block id, 16 bits on GEV 1.x cameras: it wraps from
    65535 to 1), `camera_time` the buffer's timestamp (the camera's clock, in ns).

    A frame that arrives incomplete (missing packets, size mismatch, ...) is given back to the stream, counted
    in `incomplete_frames`, logged at most every few seconds, and `read` raises FrameLost with its frame id:
    the part gets the fail-safe verdict, and one lost frame does not cost a reconnect. (Aravis may fail a buffer
    before writing the new frame's id into it; an id already seen is such a stale one, and the lost frame's
    part_id is then None.) Only when no frame at
    all arrives within `timeout_ms` does `read` raise OSError, and the capture thread reconnects.
    """

    LOG_EVERY_S = 5.0

    def __init__(self, cfg: AravisSource) -> None:
        self.cfg = cfg
        self.interval_s = 0.0
        self.name = f"Aravis camera {cfg.device!r}" if cfg.device else "Aravis camera (first found)"
        self.settings: dict[str, Any] = {}  # what the camera reports after open: id, format, size, exposure, ...
        self.incomplete_frames = 0
        self._recent_ids: deque[int] = deque(maxlen=2 * cfg.buffers + 16)  # frame ids the stream gave lately
        self._aravis: Any = None
        self._gerror: type[Exception] = Exception
        self._camera: Any = None
        self._stream: Any = None
        self._image_data: Callable[[Any], bytes] | None = None
        self._log = structlog.get_logger().bind(component="aravis", device=cfg.device)
        self._logged_at = 0.0
        self._logged_count = 0

    # --- FrameSource ------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Find and open the camera, apply the settings, queue buffers and start acquisition; OSError on failure."""
        self.close()
        self._aravis, self._gerror = load_aravis()
        try:
            self._connect()
            self._configure()
            self._start()
        except BaseException:
            self.close()
            raise
        self._log.info("aravis camera opened", **self.settings)

    def read(self) -> Grab:
        """The next frame, with its frame id as part_id; FrameLost when it arrived incomplete; OSError when none
        arrives within timeout_ms (NoFrame instead for a triggered camera that saw no trigger: an idle line)."""
        stream = self._stream
        if stream is None:
            raise OSError(f"{self.name}: not open")
        buffer = stream.timeout_pop_buffer(self.cfg.timeout_ms * 1000)
        if buffer is None:
            if self.cfg.trigger_source is not None:  # an idle triggered line is healthy
                raise NoFrame(f"{self.name}: no trigger on {self.cfg.trigger_source} within {self.cfg.timeout_ms} ms")
            raise OSError(f"{self.name}: timeout, no frame within {self.cfg.timeout_ms} ms")
        try:
            status, frame_id = buffer.get_status(), buffer.get_frame_id()
            if status != self._aravis.BufferStatus.SUCCESS:
                # unknown: 0 (GigE Vision block ids run 1..65535, so the leader was lost; a USB3 Vision camera's
                # very first frame, if lost, is reported without id too) or repeated (stale, not this frame's)
                part_id = None if frame_id == 0 or frame_id in self._recent_ids else frame_id
                self._recent_ids.append(frame_id)
                self._incomplete(status.value_nick, part_id)
                raise FrameLost(f"{self.name}: frame {part_id} arrived {status.value_nick}", part_id)
            self._recent_ids.append(frame_id)
            return Grab(image=self._image(buffer), part_id=frame_id, camera_time=buffer.get_timestamp())
        finally:
            stream.push_buffer(buffer)  # the image is already copied out: the driver may refill it

    def close(self) -> None:
        """Stop acquisition and release the stream and the camera; safe twice and after a failed open."""
        camera, stream = self._camera, self._stream
        self._camera = self._stream = None
        if camera is not None:
            try:
                camera.stop_acquisition()
            except self._gerror:
                pass  # the camera is gone already: nothing left to stop
        # dropping the last references finalizes the stream (joins its thread, frees its buffers), then the
        # device (a GigE camera's control is released, so a reopen, here or elsewhere, can take it)
        del stream
        del camera

    # --- beyond FrameSource -----------------------------------------------------------------------------------
    def software_trigger(self) -> None:
        """Fire one software trigger (with trigger_source = "Software"); OSError when the camera refuses."""
        if self._camera is None:
            raise OSError(f"{self.name}: not open")
        self._call("TriggerSoftware", self._camera.software_trigger)

    # --- open, step by step -----------------------------------------------------------------------------------
    def _connect(self) -> None:
        ar = self._aravis
        wanted = tuple(self.cfg.interfaces) if self.cfg.interfaces is not None else DEFAULT_INTERFACES
        with _DISCOVERY:
            for name in INTERFACES:
                (ar.enable_interface if name in wanted else ar.disable_interface)(name)
            ar.update_device_list()
            found = [_device_info(ar, i) for i in range(ar.get_n_devices())]
            device_id = self._pick(found, wanted)
            try:
                self._camera = ar.Camera.new(device_id)
            except self._gerror as exc:
                listing = "; ".join(d["id"] for d in found) or "none"
                raise OSError(f"{self.name}: cannot open device {device_id!r} on {'/'.join(wanted)} ({_message(exc)}); "
                              f"found: {listing}") from None
        if self._camera is None:
            raise OSError(f"{self.name}: Aravis returned no camera for {device_id!r}")
        device = self._camera.get_device()
        if isinstance(device, ar.GvDevice) and not device.is_controller():
            # Aravis opens it anyway, read-only in effect: refuse before writing a setting under the other program
            raise OSError(f"{self.name}: {device_id} is controlled by another program (GigE Vision allows one "
                          "controller at a time: close the viewer or daemon holding it); retrying")
        if self.cfg.device:
            self.name = f"Aravis camera {self.cfg.device!r} ({device_id})"
        else:
            self.name = f"Aravis camera {device_id!r}"
        self.settings = {"device_id": device_id}

    def _pick(self, found: list[dict[str, str]], wanted: tuple[str, ...]) -> str:
        """The id of the device cfg.device names (id, physical id, serial or address), or of the first one."""
        want = self.cfg.device
        if want is None:
            if not found:
                raise OSError(f"{self.name}: no camera found on {'/'.join(wanted) or 'no interface'}")
            return found[0]["id"]
        for info in found:
            if want in info.values():
                return info["id"]
        return want  # not listed (e.g. an IP address outside broadcast reach): Aravis tries it directly

    def _configure(self) -> None:
        cam, cfg = self._camera, self.cfg
        if cfg.pixel_format is not None:
            self._set_pixel_format(cfg.pixel_format)
        if (cfg.width, cfg.height, cfg.offset_x, cfg.offset_y) != (None, None, None, None):
            self._set_region()
        self._call("set AcquisitionMode = Continuous", cam.set_acquisition_mode,
                   self._aravis.AcquisitionMode.CONTINUOUS)
        if cfg.exposure_us is not None:
            self._set_float("exposure_us", "ExposureTime", cfg.exposure_us, cam.get_exposure_time_bounds,
                            cam.set_exposure_time, cam.is_exposure_auto_available, cam.set_exposure_time_auto)
        if cfg.gain_db is not None:
            self._set_float("gain_db", "Gain", cfg.gain_db, cam.get_gain_bounds, cam.set_gain,
                            cam.is_gain_auto_available, cam.set_gain_auto)
        if cfg.trigger_source is not None:
            self._set_trigger(cfg.trigger_source)
        else:
            if self._call("look up TriggerMode", cam.is_feature_available, "TriggerMode"):
                self._call("set TriggerMode = Off (free run)", cam.clear_triggers)
            if cfg.frame_rate is not None:  # frame_rate applies to free run only; a trigger paces a triggered one
                self._set_float("frame_rate", "AcquisitionFrameRate", cfg.frame_rate, cam.get_frame_rate_bounds,
                                cam.set_frame_rate)
        if cam.is_gv_device() and cfg.packet_size is not None:
            self._call(f"set GevSCPSPacketSize = {cfg.packet_size}", cam.gv_set_packet_size, cfg.packet_size)
        self._read_back()

    def _set_pixel_format(self, name: str) -> None:
        cam = self._camera
        name = _ALIASES.get(name, name)
        offered = list(self._call("list PixelFormat entries", cam.dup_available_pixel_formats_as_strings) or [])
        offered_here = [_ALIASES.get(n, n) for n in offered]
        if name not in offered_here:
            raise OSError(f"{self.name}: pixel_format {name!r} is not offered by the camera "
                          f"(it offers: {', '.join(offered) or 'none'})")
        if name not in SUPPORTED_FORMATS:
            raise OSError(f"{self.name}: pixel_format {name!r} cannot be converted (supported: {_supported()})")
        self._call(f"set PixelFormat = {name}", cam.set_pixel_format_from_string, offered[offered_here.index(name)])

    def _set_region(self) -> None:
        """Set the sensor region; OSError naming the region and the camera's limits when it does not fit."""
        cam, cfg = self._camera, self.cfg
        x, y, width, height = self._call("read the region", cam.get_region)
        x, y = _given(cfg.offset_x, x), _given(cfg.offset_y, y)
        width, height = _given(cfg.width, width), _given(cfg.height, height)
        w_bounds = self._call("read Width bounds", cam.get_width_bounds)
        h_bounds = self._call("read Height bounds", cam.get_height_bounds)
        sensor = self._call("read the sensor size", cam.get_sensor_size)
        if not (w_bounds[0] <= width <= w_bounds[1] and h_bounds[0] <= height <= h_bounds[1]
                and x + width <= sensor[0] and y + height <= sensor[1]):
            raise OSError(f"{self.name}: region {width}x{height} at ({x}, {y}) does not fit the camera: sensor "
                          f"{sensor[0]}x{sensor[1]}, Width {w_bounds[0]}..{w_bounds[1]}, "
                          f"Height {h_bounds[0]}..{h_bounds[1]}")
        self._call(f"set region {width}x{height} at ({x}, {y})", cam.set_region, x, y, width, height)

    def _set_float(self, key: str, feature: str, value: float, bounds: Callable[[], Any],
                   setter: Callable[..., Any], auto_available: Callable[[], bool] | None = None,
                   set_auto: Callable[..., Any] | None = None) -> None:
        low, high = self._call(f"read {feature} bounds", bounds)
        if not low <= value <= high:
            raise OSError(f"{self.name}: {key} = {value:g} is outside the camera's {feature} range "
                          f"{low:g}..{high:g}")
        if auto_available is not None and set_auto is not None and self._call(f"look up {feature}Auto",
                                                                             auto_available):
            self._call(f"set {feature}Auto = Off", set_auto, self._aravis.Auto.OFF)
        self._call(f"set {feature} = {value:g}", setter, value)

    def _set_trigger(self, source: str) -> None:
        cam = self._camera
        offered = list(self._call("list TriggerSource entries", cam.dup_available_trigger_sources) or [])
        if source not in offered:
            raise OSError(f"{self.name}: trigger_source {source!r} is not offered by the camera "
                          f"(it offers: {', '.join(offered) or 'none'})")
        self._call(f"set TriggerMode = On, TriggerSource = {source}", cam.set_trigger, source)

    def _read_back(self) -> None:
        """Record what the camera now reports (for the log line and for tests); unreadable values are left out."""
        cam = self._camera
        self.settings.update(read_settings(cam, self._gerror))
        pixel_format = self._call("read PixelFormat", cam.get_pixel_format)
        if pixel_format not in PIXEL_FORMATS:
            raise OSError(f"{self.name}: the camera's pixel format {self.settings.get('pixel_format', pixel_format)!r} "
                          f"cannot be converted; set pixel_format to one of: {_supported()}")

    def _start(self) -> None:
        ar, cam = self._aravis, self._camera
        payload = self._call("read PayloadSize", cam.get_payload)
        stream = self._call("create the stream", cam.create_stream, None, None)
        if stream is None:
            raise OSError(f"{self.name}: cannot create the stream")
        self._stream = stream
        if isinstance(stream, ar.GvStream):
            # read after creating the stream, which may have lowered it (Aravis's test packet check)
            self.settings["packet_size"] = self._call("read GevSCPSPacketSize", cam.gv_get_packet_size)
            # without an automatic socket buffer, large frames overflow the kernel's default one and hardly any
            # arrive whole; lost packets are asked for again
            stream.set_property("socket-buffer", ar.GvStreamSocketBuffer.AUTO)
            stream.set_property("packet-resend", ar.GvStreamPacketResend.ALWAYS)
        for _ in range(self.cfg.buffers):
            stream.push_buffer(ar.Buffer.new_allocate(payload))
        self._image_data = getattr(ar.Buffer, "get_image_data", ar.Buffer.get_data)  # get_image_data: Aravis 0.8.25+
        self._call("start acquisition", cam.start_acquisition)
        self.settings["payload"] = payload

    # --- helpers ----------------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), with a GLib error turned into OSError naming the camera and the step."""
        try:
            return fn(*args)
        except self._gerror as exc:
            raise OSError(f"{self.name}: {what} failed: {_message(exc)}") from None

    def _image(self, buffer: Any) -> np.ndarray:
        # PyGObject copies the payload into a bytes object (the one copy out of the driver's buffer); the array
        # views that copy, and only formats that need converting are touched again.
        assert self._image_data is not None
        data = self._image_data(buffer)
        padding = buffer.get_image_padding()
        return to_image(data, buffer.get_image_width(), buffer.get_image_height(), buffer.get_image_pixel_format(),
                        padding[0])

    def _incomplete(self, status: str, frame_id: int | None) -> None:
        self.incomplete_frames += 1
        now = time.monotonic()
        if now - self._logged_at >= self.LOG_EVERY_S:
            self._log.warning("incomplete frames: not inspected", status=status, frame_id=frame_id,
                              count=self.incomplete_frames - self._logged_count, total=self.incomplete_frames)
            self._logged_at, self._logged_count = now, self.incomplete_frames


def read_settings(cam: Any, gerror: type[Exception]) -> dict[str, Any]:
    """What an open Aravis camera reports: identity, pixel format, region, exposure, gain, rate, trigger; values
    the camera cannot give are left out."""
    readers: dict[str, Callable[[], Any]] = {
        "vendor": cam.get_vendor_name, "model": cam.get_model_name, "serial": cam.get_device_serial_number,
        "pixel_format": cam.get_pixel_format_as_string, "region": lambda: tuple(cam.get_region()),
        "exposure_us": cam.get_exposure_time, "gain_db": cam.get_gain, "frame_rate": cam.get_frame_rate,
        "trigger_mode": lambda: cam.get_string("TriggerMode"),
        "trigger_source": lambda: cam.get_string("TriggerSource"),
    }
    settings: dict[str, Any] = {}
    for key, read in readers.items():
        try:
            settings[key] = read()
        except gerror:
            continue
    return settings


def list_cameras(interfaces: tuple[str, ...] = DEFAULT_INTERFACES) -> list[dict[str, Any]]:
    """Every camera Aravis finds on these interfaces: what discovery says and, opened read-only (GigE cameras
    another program controls included), its current settings; a camera that cannot be opened has `error`."""
    ar, gerror = load_aravis()
    cameras = []
    with _DISCOVERY:
        for name in INTERFACES:
            (ar.enable_interface if name in interfaces else ar.disable_interface)(name)
        ar.update_device_list()
        for i in range(ar.get_n_devices()):
            info: dict[str, Any] = {**_device_info(ar, i), "protocol": ar.get_device_protocol(i) or "",
                                    "vendor": ar.get_device_vendor(i) or "", "model": ar.get_device_model(i) or ""}
            try:
                cam = ar.Camera.new(info["id"])
            except gerror as exc:
                cameras.append({**info, "error": _message(exc)})
                continue
            info.update(read_settings(cam, gerror))
            device = cam.get_device()
            if isinstance(device, ar.GvDevice):
                info["controlled_elsewhere"] = not device.is_controller()
            cameras.append(info)
            del cam, device  # released before the next one is opened
    return cameras


def _given(value: int | None, current: int) -> int:
    """The configured value, or the camera's current one where none is configured."""
    return current if value is None else value


def _message(exc: BaseException) -> str:
    """A GLib.Error's message without its domain and code."""
    return str(getattr(exc, "message", exc))


def _device_info(ar: Any, index: int) -> dict[str, str]:
    """What Aravis lists for one device; cfg.device may name any of these."""
    return {"id": ar.get_device_id(index) or "", "physical_id": ar.get_device_physical_id(index) or "",
            "serial": ar.get_device_serial_nbr(index) or "", "address": ar.get_device_address(index) or ""}
