"""`pylon` source: a Basler camera (GigE, USB3) or pylon's camera emulator, through pypylon.

Which camera is opened (the same rule is documented in docs/cameras-pylon.md):

- `serial` of the emulator's form `0815-NNNN`: that emulated camera; only the emulation transport layer is
  searched, and it exists only while the environment variable PYLON_CAMEMU is a number >= 1.
- any other `serial`: the real camera (GigE or USB3) with that serial; the emulator is never considered.
- no `serial`, PYLON_CAMEMU >= 1: the first emulated camera ("try it without a camera"); nothing real is
  enumerated, so no GigE discovery is sent.
- no `serial`, PYLON_CAMEMU unset or 0: the first real camera found.

Frames are grabbed one by one (pylon's GrabStrategy_OneByOne): every frame the driver received is delivered in
order and the daemon's ring buffer is the one place where frames are dropped, counted and given the fail-safe
verdict. A grab result that is not GrabSucceeded (a GigE packet lost, a buffer the camera reported failed) is
a lost frame: `read` raises FrameLost with its BlockID, and that part gets the fail-safe verdict too. A frame
the driver never saw (out of buffers) shows as a gap in part_id, which carries the grab result's BlockID (the
camera's frame counter).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import PylonSource
from ..types import FrameLost, Grab, NoFrame

EMULATOR_SERIAL = re.compile(r"0815-\d{4}")  # what pylon's camera emulator calls its devices: 0815-0000, ...
EMULATOR_CLASS = "BaslerCamEmu"  # device class of the emulation transport layer
_NO_BLOCK_ID = 0xFFFF_FFFF_FFFF_FFFF  # GetBlockID() where the transport layer has none
_TRIGGER_STARTS = ("AcquisitionStart", "FrameBurstStart", "FrameStart")  # selectors set Off for free run
_THROWN_AT = re.compile(r"\s*:\s*\w*Exception thrown.*$")  # "... : OutOfRangeException thrown in node ... line 91)"
_INSTALL_HINT = "pypylon is not installed: `pip install pypylon` (or bash .ci/install-pylon.sh .venv)"


def emulation_enabled(env: Mapping[str, str]) -> bool:
    """True when PYLON_CAMEMU asks pylon for at least one emulated camera."""
    value = env.get("PYLON_CAMEMU", "").strip()
    return value.isdigit() and int(value) > 0


def use_emulator(serial: str | None, env: Mapping[str, str]) -> bool:
    """Whether a camera with this configured serial is looked for among the emulated ones only (module doc)."""
    if serial is not None:
        return EMULATOR_SERIAL.fullmatch(serial) is not None
    return emulation_enabled(env)


def _import_pypylon() -> tuple[Any, Any]:
    """pypylon's `pylon` and `genicam` modules; OSError with an install hint when pypylon is missing."""
    try:
        from pypylon import genicam, pylon
    except ImportError as exc:
        raise OSError(f"{_INSTALL_HINT} ({exc})") from exc
    return pylon, genicam


def _owned(array: np.ndarray) -> np.ndarray:
    """The array itself when its memory is its own (pypylon's GetArray copies into a bytearray), else a copy,
    so that it stays valid after the grab result's buffer goes back to the driver."""
    base: Any = array
    while isinstance(base, np.ndarray) and not base.flags.owndata:
        base = base.base
    if isinstance(base, (np.ndarray, bytes, bytearray)):
        return array
    return array.copy()


class PylonCamera:
    """A Basler camera through pypylon: found by serial, configured from GenICam settings, grabbed one by one."""

    interval_s = 0.0  # the camera paces itself (frame rate or trigger)

    def __init__(self, cfg: PylonSource) -> None:
        self.cfg = cfg
        self._cam: Any = None
        self._pylon: Any = None  # pypylon's modules, imported at open
        self._genicam: Any = None
        self._converters: dict[int, Any] = {}
        self.name = cfg.serial or "(first found)"

    @property
    def camera(self) -> Any:
        """The open pylon InstantCamera (for reading settings back), or None when closed."""
        return self._cam

    def open(self) -> None:
        """Find, open and configure the camera and start grabbing; OSError with the reason when it cannot."""
        pylon, genicam = self._pylon, self._genicam = _import_pypylon()
        self.close()
        try:
            cam = pylon.InstantCamera(self._create_device(pylon))
        except genicam.GenericException as exc:
            raise OSError(f"pylon camera {self.name}: cannot create the device: {_first_line(exc)}") from exc
        try:
            self.name = cam.GetDeviceInfo().GetSerialNumber() or self.name
            cam.Open()
            self._cam = cam
            self._configure(genicam)
            cam.MaxNumBuffer.SetValue(self.cfg.buffers)
            cam.StartGrabbing(pylon.GrabStrategy_OneByOne, pylon.GrabLoop_ProvidedByUser)
        except genicam.GenericException as exc:
            self._cam = cam
            self.close()
            raise OSError(f"pylon camera {self.name}: cannot open and start it: {_first_line(exc)}") from exc
        except BaseException:
            self._cam = cam
            self.close()
            raise

    def read(self) -> Grab:
        """The next frame as uint8 gray or BGR with part_id = BlockID; FrameLost for a failed grab result; OSError
        when grabbing fails or a free-running camera times out; NoFrame on a triggered camera's timeout (idle)."""
        cam, pylon, genicam = self._cam, self._pylon, self._genicam
        if cam is None:
            raise OSError(f"pylon camera {self.name} is not open")
        try:
            result = cam.RetrieveResult(self.cfg.timeout_ms, pylon.TimeoutHandling_Return)
        except genicam.GenericException as exc:  # grabbing stopped, device removed, ...
            raise OSError(f"pylon camera {self.name}: grab failed: {_first_line(exc)}") from exc
        if result is None or not result.IsValid():
            if cam.IsCameraDeviceRemoved():
                raise OSError(f"pylon camera {self.name}: device removed")
            if self.cfg.trigger_source is not None:  # waiting for the next part is normal on a triggered line
                raise NoFrame(f"no trigger on {self.cfg.trigger_source} within {self.cfg.timeout_ms} ms")
            raise OSError(f"timeout: no frame from pylon camera {self.name} within {self.cfg.timeout_ms} ms")
        try:
            block_id = int(result.GetBlockID())
            part_id = None if block_id == _NO_BLOCK_ID else block_id
            if not result.GrabSucceeded():
                raise FrameLost(f"pylon camera {self.name}: frame {part_id} failed: {result.GetErrorDescription()} "
                                f"(error 0x{result.GetErrorCode() & 0xFFFFFFFF:08X})", part_id)
            image = self._to_uint8(pylon, result)
            stamp = int(result.GetTimeStamp())
        except genicam.GenericException as exc:
            raise OSError(f"pylon camera {self.name}: cannot convert the frame: {_first_line(exc)}") from exc
        finally:
            result.Release()
        return Grab(image=image, part_id=part_id, camera_time=stamp)

    def close(self) -> None:
        """Stop grabbing and close the camera; safe twice and after a failed open."""
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in ("StopGrabbing", "Close", "DestroyDevice"):
            try:
                getattr(cam, step)()
            except Exception:  # best effort: a removed device fails here, and the next open starts afresh
                pass

    def _create_device(self, pylon: Any) -> Any:
        """The pylon device for the configured camera, found by the rule in the module doc."""
        factory = pylon.TlFactory.GetInstance()
        serial = self.cfg.serial
        if use_emulator(serial, os.environ):
            if not emulation_enabled(os.environ):
                needed = int(str(serial)[5:]) + 1
                raise OSError(f"pylon camera {serial} is an emulated camera: set PYLON_CAMEMU={needed} (the number "
                              "of emulated cameras) in the daemon's environment")
            tl = factory.CreateTl(EMULATOR_CLASS)
            if tl is None:
                raise OSError("pylon's camera emulation transport layer is not available")
            try:
                devices = list(tl.EnumerateDevices())
                info = self._pick(devices, serial, f"emulated (PYLON_CAMEMU={os.environ.get('PYLON_CAMEMU')})")
                return tl.CreateDevice(info)
            finally:
                factory.ReleaseTl(tl)
        devices = [d for d in factory.EnumerateDevices() if d.GetDeviceClass() != EMULATOR_CLASS]
        return factory.CreateDevice(self._pick(devices, serial, "GigE/USB"))

    @staticmethod
    def _pick(devices: list[Any], serial: str | None, kind: str) -> Any:
        """The device with this serial (or the first); OSError naming the serial and what was found."""
        for device in devices:
            if serial is None or device.GetSerialNumber() == serial:
                return device
        listed = ", ".join(f"{d.GetSerialNumber()} ({d.GetModelName()})" for d in devices) or "none"
        wanted = f"serial {serial}" if serial is not None else "any camera"
        raise OSError(f"no {kind} pylon camera with {wanted}; found: {listed}")

    def _configure(self, genicam: Any) -> None:
        """Apply the settings that are not None, in an order the cameras accept (ROI before frame rate)."""
        cfg = self.cfg
        if cfg.pixel_format is not None:
            self._set(genicam, ("PixelFormat",), cfg.pixel_format)
        if cfg.width is not None:
            self._set_roi(genicam, "Width", "OffsetX", cfg.width)
        if cfg.height is not None:
            self._set_roi(genicam, "Height", "OffsetY", cfg.height)
        if cfg.offset_x is not None:
            self._set(genicam, ("OffsetX",), int(cfg.offset_x))
        if cfg.offset_y is not None:
            self._set(genicam, ("OffsetY",), int(cfg.offset_y))
        if cfg.exposure_us is not None:
            self._try_set(genicam, "ExposureAuto", "Off")
            self._set(genicam, ("ExposureTime", "ExposureTimeAbs"), float(cfg.exposure_us))
        if cfg.gain_db is not None:
            self._try_set(genicam, "GainAuto", "Off")
            self._set(genicam, ("Gain", "GainAbs"), float(cfg.gain_db))
        if cfg.frame_rate is not None:
            self._try_set(genicam, "AcquisitionFrameRateEnable", True)  # some models have no switch
            self._set(genicam, ("AcquisitionFrameRate", "AcquisitionFrameRateAbs"), float(cfg.frame_rate))
        self._set_trigger(genicam, cfg.trigger_source)

    def _set_trigger(self, genicam: Any, source: str | None) -> None:
        """Free run (every start trigger Off), or FrameStart triggered by `source` (e.g. Line1)."""
        selector = self._node(genicam, "TriggerSelector")
        selectors = _symbolics(selector) if selector is not None else []
        for name in _TRIGGER_STARTS:
            if name in selectors and genicam.IsWritable(selector):
                selector.SetValue(name)
                self._try_set(genicam, "TriggerMode", "Off")
        if source is None:
            if selector is None:
                self._try_set(genicam, "TriggerMode", "Off")
            return
        if selector is not None:
            self._set(genicam, ("TriggerSelector",), "FrameStart")
        self._set(genicam, ("TriggerMode",), "On")
        self._set(genicam, ("TriggerSource",), source)

    def _set_roi(self, genicam: Any, size: str, offset: str, value: int) -> None:
        """Set Width or Height, moving the offset back to 0 first when the new size would not fit."""
        node, max_node = self._node(genicam, offset), self._node(genicam, f"{size}Max")
        if node is not None and max_node is not None and genicam.IsWritable(node):
            if node.GetValue() + value > max_node.GetValue():
                node.SetValue(0)
        self._set(genicam, (size,), int(value))

    def _node(self, genicam: Any, name: str) -> Any:
        """The camera's node of this name when it is available, else None (pypylon < 26.6 raises, newer gives a
        placeholder)."""
        try:
            node = self._cam.GetNodeMap().GetNode(name)
        except genicam.GenericException:
            return None
        if node is None or not genicam.IsAvailable(node):
            return None
        return node

    def _try_set(self, genicam: Any, name: str, value: Any) -> None:
        """Set a node where the camera has it and accepts the value; ignore it otherwise (e.g. ExposureAuto)."""
        node = self._node(genicam, name)
        if node is not None and genicam.IsWritable(node):
            try:
                node.SetValue(value)
            except genicam.GenericException:
                pass

    def _set(self, genicam: Any, names: tuple[str, ...], value: Any) -> None:
        """Set the first of `names` the camera has; OSError naming the node, the value and what it accepts."""
        for name in names:
            node = self._node(genicam, name)
            if node is not None:
                break
        else:
            raise OSError(f"pylon camera {self.name} has no {' or '.join(names)} to set to {value!r}")
        if not genicam.IsWritable(node):
            raise OSError(f"pylon camera {self.name}: {name} is not writable (wanted {value!r})")
        try:
            node.SetValue(value)
        except genicam.GenericException as exc:
            raise OSError(f"pylon camera {self.name}: cannot set {name} = {value!r}; {_accepted(node)} "
                          f"({_first_line(exc)})") from exc

    def _to_uint8(self, pylon: Any, result: Any) -> np.ndarray:
        """Mono8 and BGR8 as they are; other mono formats to Mono8, colour/Bayer/packed ones to BGR8."""
        pixel_type = result.GetPixelType()
        if pixel_type in (pylon.PixelType_Mono8, pylon.PixelType_BGR8packed) and result.GetPaddingX() == 0:
            return _owned(result.GetArray())
        converter = self._converters.get(pixel_type)
        if converter is None:
            converter = pylon.ImageFormatConverter()
            out = pylon.PixelType_Mono8 if pylon.IsMonoImage(pixel_type) else pylon.PixelType_BGR8packed
            converter.OutputPixelFormat = out
            self._converters[pixel_type] = converter
        image = converter.Convert(result)
        try:
            return _owned(image.GetArray())
        finally:
            image.Release()


# what `inspector cameras` shows: key -> node names, the first the camera has wins (SFNC name, then older one)
_LISTED = {"pixel_format": ("PixelFormat",), "width": ("Width",), "height": ("Height",),
           "frame_rate": ("AcquisitionFrameRate", "AcquisitionFrameRateAbs"),
           "exposure_us": ("ExposureTime", "ExposureTimeAbs"), "gain_db": ("Gain", "GainAbs"),
           "trigger_mode": ("TriggerMode",), "trigger_source": ("TriggerSource",)}


def list_cameras() -> list[dict[str, Any]]:
    """Every camera pylon finds (emulated ones too while PYLON_CAMEMU is set), with its current settings; one that
    cannot be opened (another program holds it) has `error`. Enumerating GigE cameras broadcasts discovery."""
    pylon, genicam = _import_pypylon()
    factory = pylon.TlFactory.GetInstance()
    cameras = []
    for info in factory.EnumerateDevices():
        entry: dict[str, Any] = {"id": info.GetFullName(), "vendor": info.GetVendorName(),
                                 "model": info.GetModelName(), "serial": info.GetSerialNumber(),
                                 "protocol": info.GetDeviceClass(), "address": _address(info)}
        cam = pylon.InstantCamera(factory.CreateDevice(info))
        try:
            cam.Open()
            nodes = cam.GetNodeMap()
            for key, names in _LISTED.items():
                value = _readable(nodes, genicam, names)
                if value is not None:
                    entry[key] = value
        except genicam.GenericException as exc:
            entry["error"] = _first_line(exc)
        finally:
            cam.Close()
            cam.DestroyDevice()
        cameras.append(entry)
    return cameras


def _address(info: Any) -> str:
    """A GigE camera's IP address, else the transport layer's own address for the device (USB port, ...)."""
    try:
        if info.IsIpAddressAvailable() and info.GetIpAddress():
            return str(info.GetIpAddress())
    except Exception:  # a device class without the property
        pass
    return str(info.GetAddress()) if hasattr(info, "GetAddress") else ""


def _readable(nodes: Any, genicam: Any, names: tuple[str, ...]) -> Any:
    """The value of the first of these nodes the camera has and can read, else None."""
    for name in names:
        try:
            node = nodes.GetNode(name)
            if node is not None and genicam.IsReadable(node):
                return node.GetValue()
        except genicam.GenericException:
            continue
    return None


def _symbolics(node: Any) -> list[str]:
    """The entry names of an enumeration node."""
    return [str(s) for s in node.GetSymbolics()]


def _accepted(node: Any) -> str:
    """What a node accepts, for an error message: its entries or its range."""
    try:
        if hasattr(node, "GetSymbolics"):
            return "accepted: " + ", ".join(_symbolics(node))
        if hasattr(node, "GetMin"):
            return f"range {node.GetMin()}..{node.GetMax()}"
    except Exception:
        pass
    return "value refused"


def _first_line(exc: BaseException) -> str:
    """The first line of a GenICam exception's message (the rest is file and line of the C++ source)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return _THROWN_AT.sub("", text.splitlines()[0]) or text.splitlines()[0]
