"""Error heatmaps as pictures: a colour map of the anomaly map, blended over the image it belongs to.

Shared by the daemon's archive and the offline tools (score, evaluate); needs only OpenCV and numpy.
"""

from __future__ import annotations

import cv2
import numpy as np


def heat_scale(reduction: str, threshold: float) -> float:
    """Error-map value shown as full red in heatmaps: the per-pixel error level of the threshold."""
    if reduction == "diff_std":
        return max(threshold * threshold, 1e-12)  # a std of differences; its square is a squared error
    if reduction == "mse":
        return max(4.0 * threshold, 1e-12)  # mean of the map; defects are local, well above the mean
    return max(threshold, 1e-12)  # smoothed_max, topk_mean: already a local squared-error level


def heatmap(error: np.ndarray, vmax: float) -> np.ndarray:
    """Error map -> BGR uint8 colour map (JET), full red at `vmax`."""
    level = np.clip(np.nan_to_num(error / max(vmax, 1e-12)), 0.0, 1.0)
    return cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)


def overlay(image: np.ndarray, error: np.ndarray, vmax: float, alpha: float = 0.45) -> np.ndarray:
    """The error heatmap blended over an image of any size (the map is resized to it)."""
    base = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    err = cv2.resize(error.astype(np.float32), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(base, 1.0 - alpha, heatmap(err, vmax), alpha, 0.0)


def overlay_roi(frame: np.ndarray, error: np.ndarray, vmax: float,
                roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """The whole frame (BGR) with the heatmap blended over its region of interest (the whole frame if None)."""
    out = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    h, w = out.shape[:2]
    x, y, rw, rh = roi if roi is not None else (0, 0, w, h)
    x0, y0, x1, y1 = min(x, w), min(y, h), min(x + rw, w), min(y + rh, h)
    if x1 <= x0 or y1 <= y0:  # an ROI outside the frame: show the map over the whole frame
        x0, y0, x1, y1 = 0, 0, w, h
    out[y0:y1, x0:x1] = overlay(out[y0:y1, x0:x1], error, vmax)
    return out
