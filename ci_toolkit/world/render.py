"""Vectorised rendering of world images in torch (no image library, no files).

Every random draw comes from the `torch.Generator` passed in, so a (seed, n) pair always yields the same
images. Images are float tensors in [0, 1], shape [n, 3, H, W].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .spec import COLOURS, OOD_COLOURS, DomainConfig

ALL_COLOURS = {**COLOURS, **OOD_COLOURS}


# ---- shapes: signed "distances" (negative inside) in the object's local frame, radius ~0.85 ----------
def _polygon(px, py, verts):
    """Convex polygon given counter-clockwise vertices: max over edges of the outward half-plane."""
    d = None
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
        nx, ny = y1 - y0, -(x1 - x0)
        norm = math.hypot(nx, ny)
        e = ((px - x0) * nx + (py - y0) * ny) / norm
        d = e if d is None else torch.maximum(d, e)
    return d


def _box(px, py, hx, hy):
    return torch.maximum(px.abs() - hx, py.abs() - hy)


def _circle(px, py, cx, cy, r):
    return torch.sqrt((px - cx) ** 2 + (py - cy) ** 2 + 1e-12) - r


_TRI = [(0.0, 0.85), (-0.74, -0.43), (0.74, -0.43)]


def _shape_sdf(name: str, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    r = torch.sqrt(px**2 + py**2 + 1e-12)
    if name == "circle":
        return r - 0.82
    if name == "square":
        return _box(px, py, 0.68, 0.68)
    if name == "triangle":
        return _polygon(px, py, _TRI)
    if name == "star":
        phi = torch.atan2(py, px)
        return (r - (0.60 + 0.30 * torch.cos(5 * phi))) * 0.7
    if name == "cross":
        return torch.minimum(_box(px, py, 0.26, 0.85), _box(px, py, 0.85, 0.26))
    if name == "ring":
        return (r - 0.62).abs() - 0.22
    if name == "crescent":
        return torch.maximum(r - 0.85, -_circle(px, py, 0.40, 0.12, 0.68))
    if name == "semicircle":
        return torch.maximum(_circle(px, py, 0.0, -0.35, 0.9), -(py + 0.35))
    if name == "bar":
        return _box(px, py, 0.90, 0.24)
    if name == "heart":
        lobes = torch.minimum(_circle(px, py, -0.36, 0.28, 0.42), _circle(px, py, 0.36, 0.28, 0.42))
        tip = _polygon(px, py, [(-0.76, 0.18), (0.0, -0.85), (0.76, 0.18)])
        return torch.minimum(lobes, tip)
    # held-out shapes (OOD only)
    if name == "arrow":
        head = _polygon(px, py, [(0.2, 0.62), (0.2, -0.62), (0.9, 0.0)])
        return torch.minimum(_box(px + 0.3, py, 0.52, 0.18), head)
    if name == "hourglass":
        top = _polygon(px, py, [(-0.65, 0.85), (0.0, 0.0), (0.65, 0.85)])
        bot = _polygon(px, py, [(-0.65, -0.85), (0.65, -0.85), (0.0, 0.0)])
        return torch.minimum(top, bot)
    if name == "lshape":
        return torch.minimum(_box(px + 0.55, py, 0.22, 0.85), _box(px, py + 0.63, 0.77, 0.22))
    raise ValueError(f"unknown shape {name!r}")


def _pattern(name: str, px: torch.Tensor, py: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """1 where the pattern's second tone shows, else 0 (soft)."""
    if name == "solid":
        return torch.zeros_like(px)
    if name == "striped":
        return torch.sigmoid(6 * torch.sin(math.pi * freq * px))
    if name == "dotted":
        u = torch.remainder(px * freq / 2, 1.0) - 0.5
        v = torch.remainder(py * freq / 2, 1.0) - 0.5
        return torch.sigmoid(30 * (0.09 - (u**2 + v**2)))
    if name == "checkered":
        return torch.sigmoid(6 * torch.sin(math.pi * freq * px) * torch.sin(math.pi * freq * py))
    raise ValueError(f"unknown pattern {name!r}")


def _u(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g)


def _background(kind: str, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    if kind == "smooth":
        # soft colour field: a 3x3 grid of muted random colours, upsampled, plus fine grain
        base = _u(g, n, 0.2, 0.8, 3, 3, 3)
        grey = base.mean(1, keepdim=True)
        base = 0.55 * base + 0.45 * grey
        bg = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
        return bg + 0.04 * torch.randn((n, 3, size, size), generator=g)
    if kind == "clutter":
        # busy background: three random oriented colour gratings
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        bg = torch.zeros(n, 3, size, size)
        for _ in range(3):
            theta = _u(g, n, 0, math.pi, 1, 1, 1)
            freq = _u(g, n, 2.0, 7.0, 1, 1, 1)
            phase = _u(g, n, 0, 2 * math.pi, 1, 1, 1)
            wave = torch.sin(freq * math.pi * (xs * torch.cos(theta) + ys * torch.sin(theta)) + phase)
            colour = _u(g, n, 0.0, 1.0, 3, 1, 1)
            bg = bg + colour * (0.5 + 0.5 * wave) / 3
        return 0.15 + 0.85 * bg
    raise ValueError(f"unknown background {kind!r}")


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels, 0 = none) as one grouped separable convolution."""
    n, c, h, w = x.shape
    if float(sigma.max()) <= 0:
        return x
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp_min(1e-3).view(n, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, 0)  # [n*c, taps]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the chroma (I, Q) plane of YIQ: a hue shift that keeps luminance."""
    a = math.radians(degrees)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    m = torch.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ
    return torch.einsum("ij,njhw->nihw", m, x)


def render(
    shapes: list[str],
    colours: list[str],
    patterns: list[str],
    domain: DomainConfig,
    size: int,
    g: torch.Generator,
) -> torch.Tensor:
    """Render one image per (shape, colour, pattern) triple, in `domain`, at `size` x `size` pixels."""
    n = len(shapes)
    bg = _background(domain.background, n, size, g)
    if domain.background_contrast != 1.0:
        mean = bg.mean(dim=(1, 2, 3), keepdim=True)
        bg = mean + (bg - mean) * domain.background_contrast

    # pose: centre, radius, rotation; the pixel grid mapped into each object's local frame
    scale = _u(g, n, *domain.scale).view(n, 1, 1)
    max_shift = (1.0 - scale).clamp_min(0.0) * 0.9
    cx = (2 * torch.rand(n, 1, 1, generator=g) - 1) * max_shift
    cy = (2 * torch.rand(n, 1, 1, generator=g) - 1) * max_shift
    theta = _u(g, n, 0.0, 2 * math.pi).view(n, 1, 1)
    ys, xs = torch.meshgrid(torch.linspace(1, -1, size), torch.linspace(-1, 1, size), indexing="ij")
    dx, dy = xs - cx, ys - cy
    px = (dx * torch.cos(theta) + dy * torch.sin(theta)) / scale
    py = (-dx * torch.sin(theta) + dy * torch.cos(theta)) / scale
    freq = _u(g, n, 3.0, 5.0).view(n, 1, 1)
    jitter = 0.06 * torch.randn(n, 3, generator=g)

    pixel = (2.0 / size) / scale  # one pixel in local units: sets the anti-aliasing width
    mask = torch.empty(n, size, size)
    tone = torch.empty(n, size, size)
    for name in set(shapes):
        idx = torch.tensor([i for i, s in enumerate(shapes) if s == name])
        mask[idx] = torch.sigmoid(-_shape_sdf(name, px[idx], py[idx]) / (0.6 * pixel[idx]))
    for name in set(patterns):
        idx = torch.tensor([i for i, p in enumerate(patterns) if p == name])
        tone[idx] = _pattern(name, px[idx], py[idx], freq[idx])

    base = (torch.tensor([ALL_COLOURS[c] for c in colours]) + jitter).clamp(0, 1)  # [n, 3]
    dark = base.mean(1, keepdim=True) < 0.35
    second = torch.where(dark, 0.45 * base + 0.5, 0.4 * base)  # the pattern's second tone
    base, second = base.view(n, 3, 1, 1), second.view(n, 3, 1, 1)
    obj = base + (second - base) * tone.unsqueeze(1)
    img = bg + (obj - bg) * mask.unsqueeze(1)

    # domain effects: hue rotation and tint of the lighting, contrast, blur, sensor noise
    if domain.hue_shift:
        img = _rotate_hue(img, domain.hue_shift)
    img = img * torch.tensor(domain.tint).view(1, 3, 1, 1)
    contrast = _u(g, n, *domain.contrast).view(n, 1, 1, 1)
    img = 0.5 + (img - 0.5) * contrast
    img = _blur(img, _u(g, n, *domain.blur_sigma))
    noise = _u(g, n, *domain.noise_std).view(n, 1, 1, 1)
    img = img + noise * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1)
