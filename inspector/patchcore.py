"""Family `patchcore`: distances of a frame's patch features to a memory bank of good patches.

Each frame goes through the first stages of an ImageNet-pretrained EfficientNet-Lite0 (`inspector.backbone`);
the outputs of the tapped blocks are averaged over 3x3 neighbourhoods, brought to the finest tap's grid and
stacked, so that each grid cell has one feature vector describing a patch of the frame. Training keeps a
coreset of the good images' patch vectors (greedy farthest-point selection, as in PatchCore, Roth et al. 2022);
a frame's anomaly map is each patch's distance to its nearest bank vector, resized to the frame and squashed
into [0, 1) by d / (d + scale), which keeps the order of the distances. With `density` n > 0, each distance is
first divided by its bank vector's radius, the distance from that vector to its n-th nearest training patch:
the same step away from good patches counts for more where good patches lie close together (a local outlier
factor, as in LOF; docs/quality.md, row 133). With `whiten` w > 0, distances are measured after a linear map
fitted on the training patches, which divides each direction of the patch space by its spread among good patches
(w = 1: full whitening, the Mahalanobis distance of one covariance over all patches; w < 1: the covariance shrunk
toward its mean variance by 1 - w): a step along a direction in which good patches hardly vary counts for more
than one along their usual variation (row 134). On the CPU the trunk runs through oneDNN-fused TorchScript
(`inspector.fused`, row 136), the same in training, evaluation and the daemon. Imports only torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import LiteTrunk, block_channels, block_stride
from .fused import fused_call, traced_unfused

PROJECTION_DIMS = 128  # the coreset selection compares patches in a random projection this wide
PROJECTION_SEED = 0
SEARCH_ROWS = 1024  # patches searched at a time (4 frames of 256x256): their table against the bank stays in cache


class PatchCore(nn.Module):
    """Pretrained patch features and a bank of good ones; forward gives the anomaly map (B, 1, H, W)."""

    bank: torch.Tensor
    radius: torch.Tensor
    scale: torch.Tensor
    # its trunk runs oneDNN-fused on the CPU (`inspector.fused`): the worker runs its `fused_run()` there, since a
    # trace of it whole would record the unfused trunk, whose numbers training did not calibrate on
    fused_on_cpu = True

    def __init__(self, channels: int, height: int, width: int, layers: Sequence[int] | str | int = (10, 14),
                 pool: int = 3, bank: int = 0, density: int = 0, whiten: float = 0.0) -> None:
        super().__init__()
        taps = _taps(layers)
        self.trunk = LiteTrunk(taps)
        step = block_stride(taps[-1])
        if height % step or width % step:
            raise ValueError(f"patchcore with feature layers {taps} needs height and width divisible by {step}")
        if pool < 1 or pool % 2 == 0:
            raise ValueError(f"patchcore pool must be an odd number of pixels, not {pool}")
        if channels not in (1, 3):
            raise ValueError(f"patchcore reads 1 or 3 channels, not {channels}")
        if density < 0:
            raise ValueError(f"patchcore density must be a count of neighbours >= 0 (0: plain), not {density}")
        if not 0.0 <= float(whiten) <= 1.0:
            raise ValueError(f"patchcore whiten must be a strength from 0 (none) to 1 (full), not {whiten}")
        self.channels = channels
        self.pool = pool
        self.grid = (height // block_stride(taps[0]), width // block_stride(taps[0]))
        self.dims = sum(block_channels(n) for n in taps)
        self.density = int(density)
        self.whiten = float(whiten)
        self.register_buffer("bank", torch.zeros(bank, self.dims))  # good patch vectors
        # each bank vector's distance to its density-th nearest training patch (all ones: plain distances)
        self.register_buffer("radius", torch.ones(bank), persistent=self.density > 0)
        self.register_buffer("scale", torch.ones(()))  # distances map to d / (d + scale)
        # the linear map from patch vectors to the space distances are measured in (the identity: plain space)
        self.register_buffer("transform", torch.eye(self.dims), persistent=self.whiten > 0)
        # which training image each bank vector came from (`build_bank` sets it; not saved: training's alone)
        self.bank_owner = torch.zeros(bank, dtype=torch.long)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch vectors (B, dims, grid_h, grid_w) of a batch in [0, 1]."""
        return self.patches(self.trunk_maps(x))

    def trunk_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped blocks' outputs for a batch in [0, 1]: on the CPU through the fused trunk (the same fused
        kernels in training, evaluation and the daemon)."""
        x = x * (255.0 / 128.0) - (127.5 / 128.0)  # the range the weights were trained on
        x = x.expand(-1, 3, -1, -1) if self.channels == 1 else x.flip(1)  # BGR frames, RGB weights
        return fused_call(self.trunk, x)

    def patches(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The tapped maps averaged over `pool` x `pool` cells, on the finest tap's grid, stacked."""
        out = []
        for m in maps:
            # zeros counted at the border (PatchCore does the same): excluding them cost magnetic_tile 0.03 AUROC
            m = F.avg_pool2d(m, self.pool, 1, self.pool // 2, count_include_pad=True)
            if tuple(m.shape[-2:]) != self.grid:
                m = F.interpolate(m, size=self.grid, mode="bilinear", align_corners=False)
            out.append(m)
        return torch.cat(out, dim=1)

    def distances(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Each patch's distance to its nearest bank vector (B, 1, grid_h, grid_w), float32. With `exclude` (B,),
        the training images' numbers (their rows in the images `build_bank` took), each frame's nearest vector is
        sought among those not taken from that image (`bank_owner`): its score as if it had been held out."""
        return self.nearest(self.features(x), exclude)

    def nearest(self, f: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """`distances` of the patch vectors f (B, dims, grid_h, grid_w)."""
        f = f.float()
        b, d, h, w = f.shape
        p = f.permute(0, 2, 3, 1).reshape(b * h * w, d)
        if self.whiten:
            p = p @ self.transform.float()
        bank = self.bank.float()
        # Choose each patch's nearest bank vector by the largest p.v - |v|^2 / 2 (= (|p|^2 - |p - v|^2) / 2), then
        # measure the distance to it exactly: the expanded form would lose a near patch's distance to the rounding of
        # the large terms it subtracts. Both sides are first moved by the bank's mean, which changes no distance and
        # makes the products smaller, so their rounding too. The choice is one product over the bank and one pass
        # over its (patches x bank) table, whose passes cost as much as the product (docs/quality.md, row 107), for
        # SEARCH_ROWS patches at a time: a table of a batch of 8 against 6,000 vectors no longer fits the CPU's cache
        # and took 2.3 times as long whole (row 138).
        centre = bank.mean(0)
        p, v = p - centre, bank - centre
        bias = (v * v).sum(-1).mul(-0.5)
        half = self.bank.dtype == torch.bfloat16  # a CPU with fast bf16: the product in it, the rest in float32
        vt = v.to(torch.bfloat16).t() if half else v.t()
        owner = exclude.to(p.device).repeat_interleave(h * w) if exclude is not None else None
        chosen = []
        for s in range(0, len(p), SEARCH_ROWS):
            q = p[s:s + SEARCH_ROWS]
            near = (q.to(torch.bfloat16) @ vt).float().add_(bias) if half else torch.addmm(bias, q, vt)
            if owner is not None:
                near = near.masked_fill(owner[s:s + SEARCH_ROWS, None] == self.bank_owner[None, :], float("-inf"))
            chosen.append(near.max(dim=-1).indices)
        index = torch.cat(chosen)
        dist = (p - v[index]).norm(dim=-1)
        if self.density:
            dist = dist / self.radius.float()[index]
        return dist.reshape(b, 1, h, w)

    def forward(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """The anomaly map (B, 1, H, W), float32, of a batch (B, C, H, W); `exclude`: see `distances`."""
        return self.from_maps(x, self.trunk_maps(x), exclude)

    def from_maps(self, x: torch.Tensor, maps: list[torch.Tensor], exclude: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` of the batch x whose trunk maps are `maps`."""
        d = F.interpolate(self.nearest(self.patches(maps), exclude), size=x.shape[-2:], mode="bilinear",
                          align_corners=False)
        return d / (d + self.scale.float())

    def fused_run(self) -> FusedRun:
        """The model as the CPU worker runs it (`FusedRun`)."""
        return FusedRun(self)


class FusedRun(nn.Module):
    """patchcore as the CPU worker runs it: the trunk through its fused copy (`fused_call`), and all that follows
    it as one frozen TorchScript call per input shape, traced unfused, so the eager model's numbers, which training
    calibrates on. Two calls out of Python a batch instead of some thirty: on return from each the worker waits for
    Python's lock, which the capture and publishing threads hold in turn (docs/quality.md, row 136)."""

    def __init__(self, model: PatchCore) -> None:
        super().__init__()
        self.model = model
        self._heads: dict[tuple[int, ...], Callable[..., torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.model.trunk_maps(x)
        head = self._heads.get(tuple(x.shape))
        if head is None:
            head = self._heads[tuple(x.shape)] = traced_unfused(_Head(self.model), (x, *maps))
        return head(x, *maps)


class _Head(nn.Module):
    """`PatchCore.from_maps` as a module's forward, for tracing."""

    def __init__(self, model: PatchCore) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        return self.model.from_maps(x, list(maps))


def footprint_percent(height: int, width: int, layers: Sequence[int] | str | int = (10, 14), pool: int = 3) -> float:
    """The share (%) of a frame that one patch vector describes: `pool` x `pool` cells of the finest tap's grid.
    patchcore's default score is the mean of its map's top this-share (`map_topk`): one defect's response
    spreads over about that area, so the mean over it reads the whole response, not its single loudest pixel
    (docs/quality.md, row 108)."""
    step = block_stride(_taps(layers)[0])
    return 100.0 * pool * pool / ((height // step) * (width // step))


def _taps(layers: Sequence[int] | str | int) -> list[int]:
    """Block numbers from a list, one number, or text such as "10,14" (as `--hparam layers=10,14` gives)."""
    if isinstance(layers, int):
        return [layers]
    items = layers.strip("[]() ").split(",") if isinstance(layers, str) else list(layers)
    try:
        return [int(n) for n in items]
    except ValueError:
        raise ValueError(f"patchcore layers must be block numbers such as 10,14, not {layers!r}") from None


def coreset(vectors: torch.Tensor, n: int, seed: int = PROJECTION_SEED) -> torch.Tensor:
    """Indices of n of the vectors (M, D) chosen greedily, each the farthest from those chosen before (in a random
    projection to PROJECTION_DIMS), starting from the first; all of them when n >= M."""
    m = len(vectors)
    if n >= m:
        return torch.arange(m)
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(vectors.shape[1], PROJECTION_DIMS, generator=gen) / PROJECTION_DIMS**0.5
    z = vectors.float() @ proj.to(vectors.device)
    sq = (z * z).sum(1)
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = 0
    nearest = sq - 2.0 * (z @ z[0]) + sq[0]
    for j in range(1, n):
        i = int(torch.argmax(nearest))
        chosen[j] = i
        torch.minimum(nearest, sq - 2.0 * (z @ z[i]) + sq[i], out=nearest)
    return chosen


@torch.no_grad()
def build_bank(model: PatchCore, train: torch.Tensor, held_out: torch.Tensor, size: int, batch_size: int,
               dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Fill the model's bank with a coreset of at most `size` patch vectors of the uint8 training images
    (N, C, H, W), on the images' device, with the features computed in `dtype` (as the daemon will); then set
    its scale to the median of the held-out images' largest patch distances. Returns what was done."""
    model.eval()
    run = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)  # the daemon's arithmetic
    chunks = []
    for s in range(0, len(train), batch_size):
        x = train[s:s + batch_size].to(dtype).div_(255.0)
        f = run.features(x).float()
        chunks.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu())
    vectors = torch.cat(chunks)
    if model.whiten:
        # rounded to the daemon's arithmetic first, so that training and the daemon map patches alike
        model.transform = whitening(vectors, model.whiten).to(dtype).float().to(model.scale.device)
        run.transform = model.transform.to(dtype)
        for v in vectors.split(65536):  # in place: no second copy of all the patches
            v.copy_(v @ model.transform.cpu())
    chosen = coreset(vectors, size)
    model.bank = vectors[chosen].contiguous().to(model.scale.device)
    run.bank = model.bank.to(dtype)  # the same bank in the copy, as the daemon's cast gives it
    model.bank_owner = run.bank_owner = (chosen // (len(vectors) // len(train))).to(model.scale.device)
    if model.density:
        model.radius = radii(model.bank, vectors.to(model.scale.device), model.density)
        run.radius = model.radius.to(dtype)
    _set_scale(model, run, held_out, batch_size, dtype)
    return {"patches": len(vectors), "bank": len(chosen), "scale": float(model.scale)}


@torch.no_grad()
def plain_distances(model: PatchCore, held_out: torch.Tensor, batch_size: int,
                    dtype: torch.dtype = torch.float32) -> PatchCore:
    """A copy of a fitted model that reads its bank's plain distances (`density` 0), its scale set on the held-out
    uint8 images as `build_bank` sets it; the model itself when it reads them already."""
    if not model.density:
        return model
    plain = copy.deepcopy(model)
    plain.density = 0  # its radius is then not read
    run = plain if dtype == torch.float32 else copy.deepcopy(plain).to(dtype)
    _set_scale(plain, run, held_out, batch_size, dtype)
    return plain


def _set_scale(model: PatchCore, run: PatchCore, held_out: torch.Tensor, batch_size: int, dtype: torch.dtype) -> None:
    """The model's scale: the median of the held-out images' largest patch distances, as `run` (the model in the
    daemon's arithmetic) gives them."""
    largest = torch.cat([run.distances(held_out[s:s + batch_size].to(dtype).div_(255.0)).amax(dim=(1, 2, 3))
                         for s in range(0, len(held_out), batch_size)])
    model.scale = largest.median().clamp_min(1e-6).to(model.scale.device, torch.float32)


def whitening(vectors: torch.Tensor, strength: float, chunk: int = 65536) -> torch.Tensor:
    """The symmetric (D, D) map that whitens vectors (M, D) with their covariance shrunk toward its mean variance:
    C_w = w C + (1 - w) (tr C / D) I, map C_w^(-1/2), times the root of tr C / D so that distances keep about their
    size. strength w = 1 gives full whitening (the Mahalanobis distance), 0 the identity."""
    vectors = vectors.float()
    m, dims = vectors.shape
    mean = vectors.mean(0)
    cov = torch.zeros(dims, dims, dtype=torch.float64)
    for v in vectors.split(chunk):
        c = v - mean
        cov += (c.t() @ c).double()
    cov /= max(m - 1, 1)
    level = torch.trace(cov) / dims
    shrunk = strength * cov + (1.0 - strength) * level * torch.eye(dims, dtype=torch.float64)
    values, vecs = torch.linalg.eigh(shrunk)
    floor = 1e-12 * float(level) + 1e-30
    out = (vecs * values.clamp_min(floor).rsqrt()) @ vecs.t() * level.sqrt()
    return out.float()


def radii(bank: torch.Tensor, vectors: torch.Tensor, n: int, chunk: int = 64) -> torch.Tensor:
    """Each bank vector's distance to its n-th nearest of `vectors` (M, D), not counting one copy of itself (bank
    vectors are among the training patches), float32 (bank,); at least a millionth of the median, so that no
    division by it blows up."""
    vectors = vectors.float()
    vv = (vectors * vectors).sum(-1)
    k = min(n + 1, len(vectors))
    out = []
    for s in range(0, len(bank), chunk):
        b = bank[s:s + chunk].float()
        d2 = torch.addmm(vv, b, vectors.t(), alpha=-2.0).add_((b * b).sum(-1, keepdim=True))
        out.append(d2.topk(k, dim=1, largest=False).values[:, -1].clamp_min(0.0).sqrt())
    r = torch.cat(out)
    return r.clamp_min(1e-6 * float(r.median()) + 1e-12)
