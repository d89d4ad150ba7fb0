"""Procedural textures in surface coordinates (metres), and the palettes they draw from.

Each material is a painter: a function of a surface's local coordinates
(a along it, b up it) that returns RGB. Colours are drawn from wide, shared
ranges, so that a grey car, a grey road and a grey facade can all occur:
the class has to come from shape and context, not from the colour.
"""
from __future__ import annotations

import numpy as np

from .raster import Painter


# One fixed table of random values, looked up by cell: a single gather is far
# cheaper than hashing every pixel, and a period of 256 cells never shows.
_TABLE = np.random.default_rng(20210601).random((256, 256))


def hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """A pseudo-random value in [0, 1) for each integer cell (ix, iy) (float arrays of whole numbers)."""
    i = (ix.astype(np.int64) + salt * 97) & 255
    j = (iy.astype(np.int64) + (salt >> 8) * 89 + salt) & 255
    return _TABLE[i, j]


def value_noise(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1) with features about one unit across."""
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = a - ia, b - ib
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)
    v00, v10 = hash01(ia, ib, salt), hash01(ia + 1, ib, salt)
    v01, v11 = hash01(ia, ib + 1, salt), hash01(ia + 1, ib + 1, salt)
    return (v00 * (1 - fa) + v10 * fa) * (1 - fb) + (v01 * (1 - fa) + v11 * fa) * fb


def fbm(a: np.ndarray, b: np.ndarray, salt: int, scale: float, octaves: int = 2) -> np.ndarray:
    """Noise of several octaves, centred on 0, roughly within [-0.5, 0.5]."""
    total, weight = np.zeros_like(a), 0.0
    for octave in range(octaves):
        k = 2.0**octave
        total += value_noise(a * k / scale, b * k / scale, salt + octave) / k
        weight += 1 / k
    return total / weight - 0.5


def random_colour(rng: np.random.Generator, low: float = 20, high: float = 235) -> np.ndarray:
    """Any colour at all: a paint, a plaster, a shirt."""
    grey = rng.uniform(low, high)
    tint = rng.normal(0, 1, 3)
    tint *= rng.uniform(0, 70) / max(np.linalg.norm(tint), 1e-6)
    return np.clip(grey + tint, 0, 255)


def near(rng: np.random.Generator, colour, spread: float) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.normal(0, spread, 3), 0, 255)


def plain(colour, rng: np.random.Generator, grain: float = 8.0, scale: float = 0.5) -> Painter:
    """A uniform surface with some blotches: paint, plastic, cloth."""
    colour, salt = np.asarray(colour, float), int(rng.integers(1 << 30))

    def paint(a, b):
        return colour + grain * 2 * (value_noise(a / scale, b / scale, salt) - 0.5)[:, None]

    return paint


def asphalt(rng: np.random.Generator) -> Painter:
    base = near(rng, [rng.uniform(55, 125)] * 3, 6)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        patches = fbm(a, b, salt, 6.0) * 40
        grain = (hash01(np.floor(a * 30), np.floor(b * 30), salt + 9) - 0.5) * 18
        return base + (patches + grain)[:, None]

    return paint


def cobbles(rng: np.random.Generator) -> Painter:
    base = near(rng, [rng.uniform(70, 150)] * 3, 14)
    size = rng.uniform(0.12, 0.25)
    mortar = base * rng.uniform(0.45, 0.7)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        row = np.floor(b / size)
        col = np.floor(a / size + 0.5 * (row % 2))
        jitter = (hash01(col, row, salt) - 0.5) * 45
        fa, fb = (a / size + 0.5 * (row % 2)) % 1, (b / size) % 1
        joint = (np.minimum(fa, 1 - fa) < 0.08) | (np.minimum(fb, 1 - fb) < 0.08)
        out = base + jitter[:, None]
        out[joint] = mortar
        return out

    return paint


def slabs(rng: np.random.Generator) -> Painter:
    """Paving: a grid of slabs with joints, in greys, reds or sand."""
    base = random_colour(rng, 80, 200) * 0.5 + near(rng, [150, 140, 130], 25) * 0.5
    size = rng.uniform(0.3, 0.7)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        fa, fb = (a / size) % 1, (b / size) % 1
        jitter = (hash01(np.floor(a / size), np.floor(b / size), salt) - 0.5) * 22
        out = base + (jitter + fbm(a, b, salt + 3, 2.0) * 25)[:, None]
        joint = (np.minimum(fa, 1 - fa) < 0.04) | (np.minimum(fb, 1 - fb) < 0.04)
        out[joint] *= 0.7
        return out

    return paint


def grass(rng: np.random.Generator) -> Painter:
    """Terrain: grass of any season, or bare earth and gravel."""
    hue = rng.choice(["green", "dry", "earth"], p=[0.55, 0.25, 0.2])
    base = {"green": [70, 120, 45], "dry": [140, 130, 75], "earth": [120, 95, 70]}[hue]
    base = near(rng, base, 18)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        return base * (1 + fbm(a, b, salt, 1.5, 3) * 0.7)[:, None] + (
            hash01(np.floor(a * 20), np.floor(b * 20), salt) - 0.5
        )[:, None] * 30

    return paint


def foliage(rng: np.random.Generator) -> Painter:
    """Leaves: greens mostly, sometimes autumn yellows and reds, or dark conifers."""
    kind = rng.choice(["green", "dark", "autumn", "pale"], p=[0.5, 0.2, 0.15, 0.15])
    base = {"green": [60, 110, 40], "dark": [35, 60, 35], "autumn": [170, 120, 40], "pale": [120, 150, 90]}[kind]
    base = near(rng, base, 16)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        clumps = fbm(a, b, salt, 0.6, 3)
        return base * (1 + clumps * 1.2)[:, None]

    return paint


def facade(rng: np.random.Generator) -> Painter:
    """A building front: brick, plaster, concrete or glass, with a grid of windows."""
    kind = rng.choice(["brick", "plaster", "concrete", "glass"], p=[0.3, 0.35, 0.2, 0.15])
    if kind == "brick":
        base = near(rng, rng.choice([[150, 70, 50], [170, 120, 80], [110, 60, 50], [190, 170, 130]]), 15)
    elif kind == "glass":
        base = near(rng, [70, 95, 120], 25)
    else:
        base = random_colour(rng, 90, 230)
    glass = near(rng, rng.choice([[40, 50, 60], [90, 120, 150], [25, 25, 30]]), 15)
    frame = random_colour(rng, 40, 240)
    spacing = rng.uniform(2.2, 4.0, 2)  # metres between windows (across, up)
    fill = rng.uniform(0.35, 0.7, 2)  # window share of each cell
    shop = rng.random() < 0.5
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        out = base + (fbm(a, b, salt, 3.0) * 30)[:, None]
        if kind == "brick":
            row = np.floor(b / 0.075)
            fa = (a / 0.22 + 0.5 * (row % 2)) % 1
            joint = ((b / 0.075) % 1 < 0.15) | (fa < 0.06)
            out[joint] *= 0.75
        ca, cb = (a / spacing[0]) % 1, (b / spacing[1]) % 1
        window = (np.abs(ca - 0.5) < fill[0] / 2) & (np.abs(cb - 0.55) < fill[1] / 2) & (b > spacing[1] * 0.9)
        if shop:
            window |= (b > 0.3) & (b < 2.6) & ((a / 5.0) % 1 < 0.7)
        rim = window & ~((np.abs(ca - 0.5) < fill[0] / 2 - 0.03) & (np.abs(cb - 0.55) < fill[1] / 2 - 0.03))
        pane = hash01(np.floor(a / spacing[0]), np.floor(b / spacing[1]), salt) * 50
        out[window] = glass + pane[window, None] + (b[window, None] % spacing[1]) * 6
        out[rim] = frame
        return out

    return paint


def stone_wall(rng: np.random.Generator) -> Painter:
    kind = rng.choice(["concrete", "stone", "brick"])
    if kind == "brick":
        return brick_wall(rng)
    base = random_colour(rng, 80, 210)
    size = rng.uniform(0.3, 0.6)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        out = base + (fbm(a, b, salt, 1.0, 3) * 40)[:, None]
        if kind == "stone":
            out += ((hash01(np.floor(a / size + (np.floor(b / size) % 2) * 0.5), np.floor(b / size), salt) - 0.5) * 40)[:, None]
        return out

    return paint


def brick_wall(rng: np.random.Generator) -> Painter:
    base = near(rng, rng.choice([[150, 70, 50], [170, 120, 80], [120, 110, 100]]), 15)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        row = np.floor(b / 0.075)
        fa = (a / 0.22 + 0.5 * (row % 2)) % 1
        out = base + ((hash01(np.floor(a / 0.22 + 0.5 * (row % 2)), row, salt) - 0.5) * 30)[:, None]
        out[((b / 0.075) % 1 < 0.15) | (fa < 0.06)] *= 0.7
        return out

    return paint


def fence_bars(rng: np.random.Generator) -> Painter:
    """Bars or mesh over what lies behind, all of it labelled fence, as annotators do."""
    metal = random_colour(rng, 30, 220)
    behind = near(rng, [70, 75, 65], 20)
    pitch = rng.uniform(0.08, 0.25)
    mesh = rng.random() < 0.4
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        bar = (a / pitch) % 1 < 0.3
        if mesh:
            bar |= (b / pitch) % 1 < 0.3
        else:
            bar |= (np.abs(b - 0.15) < 0.05) | (np.abs(b % 1.0 - 0.9) < 0.05)
        out = np.broadcast_to(behind, (len(a), 3)) + (fbm(a, b, salt, 0.7) * 50)[:, None]
        out = np.where(bar[:, None], metal, out)
        return out

    return paint


def glass(rng: np.random.Generator) -> Painter:
    """Vehicle windows: dark, with a sky reflection towards the top."""
    base = near(rng, [35, 45, 55], 10)
    sky = near(rng, [120, 140, 160], 25)

    def paint(a, b):
        t = np.clip(b * 2.0, 0, 1)[:, None]
        return base * (1 - t * 0.6) + sky * t * 0.6

    return paint


def vehicle_body(rng: np.random.Generator, colour, window_band: tuple[float, float] | None = None) -> Painter:
    """Paint with an optional band of windows between two heights (buses, trams, cabs)."""
    colour = np.asarray(colour, float)
    windows = glass(rng)
    salt = int(rng.integers(1 << 30))

    def paint(a, b):
        out = colour + (fbm(a, b, salt, 1.5) * 12)[:, None]
        out[b < 0.25] *= 0.35  # the dark underside and tyres
        if window_band is not None:
            low, high = window_band
            band = (b > low) & (b < high) & ((a % 1.6) > 0.12)
            out[band] = windows(a[band], b[band] - low)
        return out

    return paint


def sign_plate(rng: np.random.Generator) -> Painter:
    """A traffic sign: a ring, a field or a diamond in the colours of signs."""
    field = rng.choice([[200, 30, 30], [30, 70, 170], [230, 200, 30], [240, 240, 240], [30, 120, 60]])
    rim = rng.choice([[240, 240, 240], [200, 30, 30], [30, 30, 30]])
    field, rim = near(rng, field, 12), near(rng, rim, 10)
    symbol = random_colour(rng)

    def paint(a, b):
        # Coordinates centred on the plate, which is about 0.7 m across.
        da, db = a - 0.35, b - 0.35
        out = np.broadcast_to(field, (len(a), 3)).copy()
        out[np.hypot(da, db) > 0.28] = rim
        out[(np.abs(da) < 0.08) & (np.abs(db) < 0.16)] = symbol
        return out

    return paint


def traffic_lamp(rng: np.random.Generator) -> Painter:
    """A signal head: a housing with three lamps, one of them lit."""
    housing = near(rng, rng.choice([[30, 30, 30], [60, 60, 55], [200, 170, 30]]), 8)
    lit = int(rng.integers(3))
    colours = np.array([[255, 60, 40], [255, 190, 40], [60, 255, 120]], float)

    def paint(a, b):
        out = np.broadcast_to(housing, (len(a), 3)).copy()
        for k in range(3):
            centre = 0.22 + k * 0.3
            lamp = np.hypot(a - 0.15, b - (0.9 - centre)) < 0.1
            out[lamp] = colours[k] if k == lit else colours[k] * 0.25
        return out

    return paint


def skin(rng: np.random.Generator) -> np.ndarray:
    return near(rng, rng.choice([[230, 190, 160], [190, 140, 100], [120, 80, 55], [80, 55, 40]]), 10)
