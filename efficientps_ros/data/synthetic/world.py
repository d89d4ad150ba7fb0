"""The street as a world: a ground plan, boxes and trees, and things that move.

A street is drawn from a seed; its contents come in chunks of `CHUNK` metres
along it, each from its own seed, so a drive can go on as far as it likes
and any stretch of it is the same whenever it is visited. Every object is
made of boxes standing on or above the ground, in its own frame (x right,
y up, z forward) turned by its yaw.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...model.config import CITYSCAPES_CLASSES, VOID_TRAIN_ID
from . import textures as tx
from .raster import Painter

CHUNK = 40.0  # metres of street per chunk of contents
LANE = 3.3  # metres

# Objects are named by class; "void" marks clutter that no class covers.
TRAIN_IDS = {c.name: c.train_id for c in CITYSCAPES_CLASSES} | {"void": VOID_TRAIN_ID}


@dataclass
class Part:
    """A box in its object's frame: bottom centre `offset`, `size` (width, height, length)."""

    offset: tuple[float, float, float]
    size: tuple[float, float, float]
    paint: Painter
    front: Painter | None = None  # for the face looking along -z of the object, if it differs
    top: Painter | None = None  # for the face looking up, if it differs


@dataclass
class Thing:
    """An object of boxes at ground position (x, z), moving at `velocity` (vx, vz) m/s."""

    name: str  # a key of TRAIN_IDS
    x: float
    z: float
    yaw: float
    parts: list[Part]
    velocity: tuple[float, float] = (0.0, 0.0)
    countable: bool = False  # an instance of a thing class
    crowd: bool = False

    def at(self, time: float) -> "Thing":
        return Thing(self.name, self.x + self.velocity[0] * time, self.z + self.velocity[1] * time,
                     self.yaw, self.parts, self.velocity, self.countable, self.crowd)


@dataclass
class Tree:
    x: float
    z: float
    trunk: float  # height of the crown's centre
    radius: float
    paint: Painter
    bark: Painter
    ragged: tuple[np.ndarray, np.ndarray]  # amplitudes and phases of the crown's rim


@dataclass
class Street:
    """What stays the same along one street: its cross-section, materials, light and camera."""

    seed: int
    centre: float  # x of the road's middle
    half_width: float  # of the road
    verge: tuple[float, float]  # terrain strip between road and sidewalk, left and right
    sidewalk: tuple[float, float]  # widths, left and right
    setback: tuple[float, float]  # front zone between sidewalk and facades
    rails: bool  # a tram line down the middle
    road: Painter
    paving: Painter
    terrain: Painter
    marking: np.ndarray  # paint colour of lane lines
    sun: np.ndarray  # unit vector towards the sun
    ambient: float
    shadow: float  # how much a cast shadow darkens
    sky: tuple[np.ndarray, np.ndarray]  # horizon and zenith colours
    end: float | None  # distance of a facade closing the street, if any

    def edge(self, side: int) -> float:
        """Distance from the road's middle to the facades on `side` (0 left, 1 right)."""
        return self.half_width + self.verge[side] + self.sidewalk[side] + self.setback[side]


def make_street(seed: int) -> Street:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    half = float(rng.uniform(4.0, 8.5))
    elevation = rng.uniform(0.25, 1.2)
    azimuth = rng.uniform(0, 2 * np.pi)
    overcast = rng.random() < 0.25
    sun = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])
    horizon = tx.near(rng, [200, 205, 210] if overcast else [170, 195, 225], 20)
    zenith = tx.near(rng, [170, 175, 185] if overcast else [60, 110, 190], 25)
    return Street(
        seed=seed,
        centre=0.0,
        half_width=half,
        verge=tuple(float(rng.uniform(0.8, 2.5)) if rng.random() < 0.3 else 0.0 for _ in range(2)),
        sidewalk=tuple(float(rng.uniform(1.8, 4.5)) for _ in range(2)),
        setback=tuple(float(rng.uniform(0, 5)) if rng.random() < 0.5 else 0.0 for _ in range(2)),
        rails=bool(rng.random() < 0.3),
        road=tx.asphalt(rng) if rng.random() < 0.7 else tx.cobbles(rng),
        paving=tx.slabs(rng),
        terrain=tx.grass(rng),
        marking=tx.near(rng, [235, 235, 230] if rng.random() < 0.8 else [230, 190, 50], 10),
        sun=sun,
        ambient=float(rng.uniform(0.55, 0.8) if overcast else rng.uniform(0.3, 0.5)),
        shadow=float(rng.uniform(0.05, 0.2) if overcast else rng.uniform(0.35, 0.6)),
        sky=(horizon, zenith),
        end=float(rng.uniform(90, 200)) if rng.random() < 0.4 else None,
    )


@dataclass
class Chunk:
    things: list[Thing]
    boxes: list[Thing]  # stuff made of boxes: buildings, walls, fences, poles, signs, void objects
    trees: list[Tree]
    crossing: tuple[float, float] | None  # z range of a cross street
    front: list[tuple[float, float, int, int]]  # (z0, z1, side, ground train id) of the front zones


@lru_cache(maxsize=64)
def chunk(street_seed: int, index: int) -> Chunk:
    """The contents of metres [index * CHUNK, (index + 1) * CHUNK) of the street."""
    street = make_street(street_seed)
    rng = np.random.default_rng(np.random.SeedSequence([street_seed, 1, index + (1 << 20)]))
    z0 = index * CHUNK
    crossing = None
    if rng.random() < 0.3:
        start = z0 + rng.uniform(5, CHUNK - 15)
        crossing = (start, start + rng.uniform(8, 14))
    built = _Builder(street, rng)
    for side in (0, 1):
        built.frontage(side, z0, z0 + CHUNK, crossing)
        built.kerb_objects(side, z0, z0 + CHUNK, crossing)
        built.pedestrians(side, z0, z0 + CHUNK)
    built.traffic(z0, z0 + CHUNK, crossing)
    return Chunk(built.things, built.boxes, built.trees, crossing, built.front)


class _Builder:
    """Fills one chunk; one method per kind of content."""

    def __init__(self, street: Street, rng: np.random.Generator):
        self.street, self.rng = street, rng
        self.things: list[Thing] = []
        self.boxes: list[Thing] = []
        self.trees: list[Tree] = []
        self.front: list[tuple[float, float, int, int]] = []

    def side_x(self, side: int, distance: float) -> float:
        """x at `distance` from the road's middle on `side`."""
        return self.street.centre + (distance if side else -distance)

    # --- the frontage: facades, gardens, walls, fences, parks -----------------
    def frontage(self, side: int, z0: float, z1: float, crossing) -> None:
        """Segments of frontage along one side, leaving the cross street open."""
        rng = self.rng
        z = z0
        while z < z1:
            length = min(rng.uniform(8, 26), z1 - z)
            if crossing and z < crossing[1] and z + length > crossing[0]:
                if z < crossing[0]:
                    length = crossing[0] - z
                else:
                    self.front.append((z, crossing[1], side, TRAIN_IDS["road"]))
                    z = crossing[1]
                    continue
            self.segment(side, z, z + length)
            z += length

    def segment(self, side: int, z0: float, z1: float) -> None:
        rng, street = self.rng, self.street
        edge = street.edge(side)
        inner = street.half_width + street.verge[side] + street.sidewalk[side]
        kind = rng.choice(["building", "garden", "park", "lot"], p=[0.6, 0.2, 0.1, 0.1])
        ground = TRAIN_IDS["sidewalk"] if kind == "building" else TRAIN_IDS["terrain"]
        self.front.append((z0, z1, side, ground))
        if kind in ("building", "garden"):
            height = rng.uniform(5, 28)
            depth = 12.0
            self.add_box("building", self.side_x(side, edge + depth / 2), (z0 + z1) / 2, 0.0,
                         (depth, height, z1 - z0), tx.facade(rng))
        if kind == "park":
            for _ in range(rng.integers(1, 4)):
                self.tree(self.side_x(side, edge + rng.uniform(0, 8)), rng.uniform(z0, z1))
            if rng.random() < 0.6:
                self.add_box("building", self.side_x(side, edge + 25), (z0 + z1) / 2, 0.0,
                             (12, rng.uniform(8, 30), z1 - z0), tx.facade(rng))
        if kind == "lot":
            self.add_box("building", self.side_x(side, edge + 15), (z0 + z1) / 2, 0.0,
                         (12, rng.uniform(6, 20), z1 - z0), tx.facade(rng))
        if kind != "building" or rng.random() < 0.15:
            boundary = rng.choice(["wall", "fence", "hedge", "none"], p=[0.35, 0.35, 0.2, 0.1])
            if boundary != "none":
                self.boundary(boundary, self.side_x(side, inner + 0.2), z0, z1)

    def boundary(self, kind: str, x: float, z0: float, z1: float) -> None:
        rng = self.rng
        if kind == "wall":
            self.add_box("wall", x, (z0 + z1) / 2, 0.0, (0.3, rng.uniform(0.8, 2.6), z1 - z0), tx.stone_wall(rng))
        elif kind == "fence":
            self.add_box("fence", x, (z0 + z1) / 2, 0.0, (0.05, rng.uniform(1.0, 2.2), z1 - z0), tx.fence_bars(rng))
        else:
            self.add_box("vegetation", x, (z0 + z1) / 2, 0.0, (0.9, rng.uniform(0.8, 2.0), z1 - z0), tx.foliage(rng))

    def tree(self, x: float, z: float) -> None:
        rng = self.rng
        radius = rng.uniform(1.3, 3.2)
        count = 4
        self.trees.append(Tree(
            x, z, trunk=rng.uniform(2.5, 5.0) + radius * 0.6, radius=radius, paint=tx.foliage(rng),
            bark=tx.plain(tx.near(rng, [80, 65, 50], 15), rng),
            ragged=(rng.uniform(0.03, 0.12, count) / (np.arange(count) + 1) ** 0.5, rng.uniform(0, 2 * np.pi, count)),
        ))

    # --- at the kerb: poles, signs, lights, trees, void clutter ---------------
    def kerb_objects(self, side: int, z0: float, z1: float, crossing) -> None:
        rng, street = self.rng, self.street
        kerb = street.half_width + street.verge[side] + 0.4
        z = z0 + rng.uniform(0, 10)
        while z < z1:
            kind = rng.choice(["lamp", "sign", "light", "tree", "clutter"], p=[0.3, 0.25, 0.12, 0.23, 0.1])
            x = self.side_x(side, kerb + rng.uniform(0, 0.5))
            if kind == "lamp":
                self.pole(x, z, rng.uniform(5, 9), arm=side)
            elif kind == "sign":
                self.sign(x, z)
            elif kind == "light":
                self.signal(x, z)
            elif kind == "tree":
                self.tree(self.side_x(side, street.half_width + street.verge[side] * 0.5 + 0.8), z)
            else:
                self.clutter(self.side_x(side, kerb + rng.uniform(0.3, 1.5)), z)
            z += rng.uniform(6, 16)
        if crossing:
            self.signal(self.side_x(side, kerb), crossing[0] - 1.0)

    def pole(self, x: float, z: float, height: float, arm: int | None = None) -> None:
        rng = self.rng
        metal = tx.plain(tx.random_colour(rng, 30, 200), rng, grain=5)
        width = rng.uniform(0.12, 0.25)
        parts = [Part((0, 0, 0), (width, height, width), metal)]
        if arm is not None and rng.random() < 0.7:
            reach = rng.uniform(1.0, 2.5) * (-1 if arm else 1)
            parts.append(Part((reach / 2, height - 0.15, 0), (abs(reach), 0.15, 0.15), metal))
        self.boxes.append(Thing("pole", x, z, 0.0, parts))

    def sign(self, x: float, z: float) -> None:
        rng = self.rng
        height = rng.uniform(2.0, 3.2)
        size = rng.uniform(0.6, 0.9)
        plate = tx.sign_plate(rng)
        back = tx.plain(tx.near(rng, [150, 150, 150], 20), rng)
        self.pole(x, z, height + size * 0.8)
        yaw = 0.0 if rng.random() < 0.8 else np.pi
        self.boxes.append(Thing("traffic sign", x, z - 0.1, yaw,
                                [Part((0, height, 0), (size, size, 0.05), back, front=_scaled(plate, 0.7 / size))]))

    def signal(self, x: float, z: float) -> None:
        rng = self.rng
        height = rng.uniform(2.6, 4.5)
        self.pole(x, z, height + 1.0)
        housing = tx.plain(tx.near(rng, [35, 35, 35], 10), rng)
        self.boxes.append(Thing("traffic light", x, z - 0.2, 0.0,
                                [Part((0, height, 0), (0.35, 1.0, 0.3), housing, front=_scaled(tx.traffic_lamp(rng), 1.0))]))

    def clutter(self, x: float, z: float) -> None:
        """Bins, boxes, bollards: present in every street and labelled void."""
        rng = self.rng
        size = (rng.uniform(0.4, 1.2), rng.uniform(0.5, 1.3), rng.uniform(0.4, 1.2))
        self.boxes.append(Thing("void", x, z, rng.uniform(0, np.pi), [Part((0, 0, 0), size, tx.plain(tx.random_colour(rng), rng))]))

    # --- people on the pavement -----------------------------------------------
    def pedestrians(self, side: int, z0: float, z1: float) -> None:
        rng, street = self.rng, self.street
        inner = street.half_width + street.verge[side]
        for _ in range(rng.poisson(1.6)):
            distance = inner + rng.uniform(0.4, street.sidewalk[side] - 0.3)
            heading = rng.choice([0.0, np.pi]) + rng.normal(0, 0.3)
            speed = rng.uniform(0.8, 1.6) if rng.random() < 0.7 else 0.0
            self.things.append(self.person(self.side_x(side, distance), rng.uniform(z0, z1), heading, speed))
        if rng.random() < 0.25:
            self.crowd(self.side_x(side, inner + street.sidewalk[side] / 2), rng.uniform(z0, z1))
        if rng.random() < 0.2:
            self.parked_bicycles(self.side_x(side, inner + street.sidewalk[side] - 0.4), rng.uniform(z0, z1))

    def person(self, x: float, z: float, yaw: float, speed: float, parts_only: bool = False):
        rng = self.rng
        height = rng.uniform(1.55, 1.95)
        shirt = tx.plain(tx.random_colour(rng), rng, grain=10)
        trousers = tx.plain(tx.random_colour(rng, 15, 160), rng, grain=6)
        skin = tx.plain(tx.skin(rng), rng, grain=4)
        legs, torso = height * 0.48, height * 0.35
        step = rng.uniform(-0.15, 0.15)
        parts = [
            Part((-0.1, 0, step), (0.15, legs, 0.16), trousers),
            Part((0.1, 0, -step), (0.15, legs, 0.16), trousers),
            Part((0, legs, 0), (0.46, torso, 0.26), shirt),
            Part((0, legs + torso, 0), (0.19, height - legs - torso, 0.21), skin),
        ]
        if parts_only:
            return parts
        velocity = (speed * np.sin(yaw), speed * np.cos(yaw))
        return Thing("person", x, z, yaw, parts, velocity, countable=True)

    def crowd(self, x: float, z: float) -> None:
        """A group too dense to outline one by one: one region, flagged as a crowd."""
        rng = self.rng
        parts = []
        for _ in range(rng.integers(4, 9)):
            dx, dz = rng.uniform(-1.2, 1.2), rng.uniform(-1.5, 1.5)
            for part in self.person(0, 0, 0, 0, parts_only=True):
                offset = (part.offset[0] + dx, part.offset[1], part.offset[2] + dz)
                parts.append(Part(offset, part.size, part.paint))
        self.things.append(Thing("person", x, z, rng.uniform(-0.3, 0.3), parts, countable=True, crowd=True))

    def parked_bicycles(self, x: float, z: float) -> None:
        for k in range(self.rng.integers(1, 4)):
            self.things.append(Thing("bicycle", x, z + k * 0.7, np.pi / 2 + self.rng.normal(0, 0.1),
                                     self.cycle_parts("bicycle"), countable=True))

    def cycle_parts(self, kind: str) -> list[Part]:
        rng = self.rng
        frame = tx.plain(tx.random_colour(rng), rng)
        tyre = tx.plain([25, 25, 25], rng, grain=4)
        if kind == "bicycle":
            wheel, width, length = 0.68, 0.06, 1.75
            body = [Part((0, 0.35, 0), (0.06, 0.5, 1.0), frame), Part((0, 0.95, 0.4), (0.55, 0.06, 0.06), frame)]
        else:
            wheel, width, length = 0.62, 0.16, 2.1
            body = [Part((0, 0.35, 0), (0.45, 0.55, 1.35), frame), Part((0, 0.9, 0.55), (0.7, 0.1, 0.1), frame)]
        half = (length - wheel) / 2
        wheels = [Part((0, 0, dz), (width, wheel, wheel), tyre) for dz in (-half, half)]
        return wheels + body

    # --- vehicles -------------------------------------------------------------
    def traffic(self, z0: float, z1: float, crossing) -> None:
        rng, street = self.rng, self.street
        lanes = max(2, int(2 * street.half_width / LANE))
        width = 2 * street.half_width / lanes
        for lane in range(lanes):
            x = street.centre - street.half_width + width * (lane + 0.5)
            forward = x > street.centre
            outer = lane in (0, lanes - 1) and lanes >= 3
            if street.rails and lane in (lanes // 2 - 1, lanes // 2) and rng.random() < 0.5:
                self.tram(street.centre + (width / 2 if forward else -width / 2), z0 + rng.uniform(0, CHUNK), forward)
                continue
            z = z0 + rng.uniform(0, 12)
            while z < z1:
                if outer:
                    # A parking lane: parked cars with gaps between them.
                    if rng.random() < 0.6:
                        self.things.append(self.car(x + rng.normal(0, 0.2), z, forward, 0.0))
                    z += rng.uniform(5.5, 12)
                    continue
                z = self.vehicle(x + rng.normal(0, 0.3), z, forward)
                z += rng.uniform(3, 22)
        if crossing:
            for _ in range(rng.integers(0, 3)):
                heading = 1 if rng.random() < 0.5 else -1
                x = street.centre + rng.uniform(-street.half_width - 15, street.half_width + 15)
                thing = self.car(x, (crossing[0] + crossing[1]) / 2 + heading * 2, True, rng.uniform(3, 9))
                thing.yaw = heading * np.pi / 2
                thing.velocity = (heading * np.hypot(*thing.velocity), 0.0)
                self.things.append(thing)
            for _ in range(rng.poisson(1.5)):
                x = street.centre + rng.uniform(-street.half_width, street.half_width)
                self.things.append(self.person(x, crossing[0] - rng.uniform(1, 4), rng.choice([-1, 1]) * np.pi / 2, 1.2))

    def vehicle(self, x: float, z: float, forward: bool) -> float:
        """One vehicle in a lane from z on; returns where it ends."""
        rng = self.rng
        kind = rng.choice(["car", "truck", "bus", "motorcycle", "bicycle"], p=[0.58, 0.13, 0.11, 0.09, 0.09])
        speed = rng.uniform(4, 12) if rng.random() < 0.8 else 0.0
        if kind == "car":
            thing = self.car(x, z, forward, speed)
        elif kind in ("truck", "bus"):
            thing = self.big_vehicle(kind, x, z, forward, speed)
        else:
            thing = self.cycle(kind, x, z, forward, speed * 0.6)
        self.things.append(thing)
        return z + max(part.size[2] + abs(part.offset[2]) * 2 for part in thing.parts)

    def _motion(self, forward: bool, speed: float) -> tuple[float, tuple[float, float]]:
        yaw = (0.0 if forward else np.pi) + self.rng.normal(0, 0.04)
        return yaw, (speed * np.sin(yaw), speed * np.cos(yaw))

    def car(self, x: float, z: float, forward: bool, speed: float) -> Thing:
        rng = self.rng
        paint = tx.random_colour(rng, 15, 240)
        width, length = rng.uniform(1.65, 1.95), rng.uniform(3.7, 4.9)
        body = tx.vehicle_body(rng, paint)
        glass = tx.glass(rng)
        roof = tx.plain(paint, rng)
        tyre = tx.plain([25, 25, 25], rng, grain=3)
        cabin_height = rng.uniform(0.45, 0.75)
        # Each axle's pair of wheels as one box under the body.
        parts = [Part((0, 0, d * (length / 2 - 0.75)), (width * 0.92, 0.6, 0.62), tyre) for d in (-1, 1)]
        parts.append(Part((0, 0.25, 0), (width, rng.uniform(0.6, 0.8), length), body))
        parts.append(Part((0, 0.25 + parts[-1].size[1], rng.uniform(-0.3, 0.1)),
                          (width * 0.88, cabin_height, length * rng.uniform(0.45, 0.6)), glass, top=roof))
        yaw, velocity = self._motion(forward, speed)
        return Thing("car", x, z, yaw, parts, velocity, countable=True)

    def big_vehicle(self, kind: str, x: float, z: float, forward: bool, speed: float) -> Thing:
        rng = self.rng
        paint = tx.random_colour(rng, 30, 240)
        tyre = tx.plain([25, 25, 25], rng, grain=3)
        if kind == "bus":
            length, width, height = rng.uniform(10, 13), 2.55, rng.uniform(2.8, 3.2)
            parts = [Part((0, 0.3, 0), (width, height, length), tx.vehicle_body(rng, paint, (1.0, height - 0.3)))]
        else:
            length, width = rng.uniform(6, 9), rng.uniform(2.2, 2.5)
            cab = tx.vehicle_body(rng, paint, (1.3, 2.1))
            cargo = tx.vehicle_body(rng, tx.random_colour(rng, 30, 240))
            parts = [Part((0, 0.4, length / 2 - 1.1), (width * 0.95, 2.3, 2.2), cab),
                     Part((0, 0.5, -1.1), (width, rng.uniform(2.4, 3.2), length - 2.3), cargo)]
        parts += [Part((0, 0, d * (length / 2 - 1.2)), (width * 0.9, 0.9, 0.9), tyre) for d in (-1, 1)]
        yaw, velocity = self._motion(forward, speed)
        return Thing(kind, x, z, yaw, parts, velocity, countable=True)

    def tram(self, x: float, z: float, forward: bool) -> None:
        rng = self.rng
        length, height = rng.uniform(20, 32), rng.uniform(2.9, 3.3)
        body = tx.vehicle_body(rng, tx.random_colour(rng, 60, 240), (1.1, height - 0.35))
        yaw, velocity = self._motion(forward, rng.uniform(0, 10))
        self.things.append(Thing("train", x, z, yaw, [Part((0, 0.35, 0), (2.6, height, length), body)], velocity, countable=True))

    def cycle(self, kind: str, x: float, z: float, forward: bool, speed: float) -> Thing:
        """A bicycle or motorcycle and its rider: two instances that move as one."""
        yaw, velocity = self._motion(forward, speed)
        rider = self.person(0, 0, 0, 0, parts_only=True)
        seat = 0.55 if kind == "bicycle" else 0.5
        # Seated: the legs shorten and bend forward, the body sits on the saddle.
        rider = [Part((p.offset[0], p.offset[1] * 0.55 + seat, p.offset[2] + 0.1), (p.size[0], p.size[1] * (0.6 if k < 2 else 1), p.size[2]), p.paint)
                 for k, p in enumerate(rider)]
        self.things.append(Thing("rider", x, z, yaw, rider, velocity, countable=True))
        return Thing(kind, x, z, yaw, self.cycle_parts(kind), velocity, countable=True)

    def add_box(self, name: str, x: float, z: float, yaw: float, size, paint: Painter) -> None:
        self.boxes.append(Thing(name, x, z, yaw, [Part((0, 0, 0), tuple(size), paint)]))


def _scaled(paint: Painter, factor: float) -> Painter:
    """A painter laid out for one size, used on a face of another."""
    return lambda a, b: paint(a * factor, b * factor)
