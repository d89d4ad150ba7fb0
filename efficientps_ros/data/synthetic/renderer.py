"""From a street, a camera and a moment to a labelled image.

The order is the physical one: sky, then the ground with the shadows cast on
it, then every box and tree through the depth test, then what the camera
adds: its own bonnet and borders (void), exposure, white balance, blur, noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import textures as tx
from .camera import NEAR, Camera, clip_near
from .raster import VOID, Canvas, Label
from .scene import Scene
from .world import CHUNK, TRAIN_IDS, Part, Street, Thing, Tree, chunk

VIEW_BEHIND, VIEW_AHEAD = 30.0, 170.0  # metres of street considered around the camera
# Things and street furniture further ahead than this would be a few pixels.
THINGS_AHEAD = 60.0
SHADOW_AHEAD = 45.0
# A thing needs this many pixels at 256x512 (scaled with the image area) to
# be labelled; fewer are too small to learn from and become void.
MIN_THING_PIXELS = 40


@dataclass
class Look:
    """What the camera does to the light: fixed for a drive."""

    exposure: float
    white_balance: np.ndarray
    gamma: float
    blur: int  # passes of a 3-tap smoothing
    noise: float  # sensor noise sigma, in 8-bit steps
    bonnet: float  # share of the image height the ego vehicle covers, 0 for none
    bonnet_colour: np.ndarray
    border: int  # pixels of rectification border on each side, 0 for none


def make_look(rng: np.random.Generator, height: int) -> Look:
    return Look(
        exposure=float(np.exp(rng.normal(0, 0.22))),
        white_balance=np.exp(rng.normal(0, 0.07, 3)),
        gamma=float(rng.uniform(0.85, 1.15)),
        blur=int(rng.choice([0, 0, 1, 2])),
        noise=float(rng.uniform(1, 6)),
        bonnet=float(rng.uniform(0.06, 0.16)) if rng.random() < 0.45 else 0.0,
        bonnet_colour=tx.random_colour(rng, 15, 200),
        border=int(rng.integers(2, max(3, height // 24))) if rng.random() < 0.3 else 0,
    )


def render(street: Street, camera: Camera, time: float, look: Look, rng: np.random.Generator) -> Scene:
    canvas = Canvas(camera)
    _sky(canvas, street)
    ground = _ground(canvas, street)
    chunks = [chunk(street.seed, k) for k in _chunk_range(camera.position[2])]
    boxes = [b for c in chunks for b in c.boxes] + [t.at(time) for c in chunks for t in c.things]
    boxes = [b for b in boxes if _in_view(b, camera)]
    trees = [t for c in chunks for t in c.trees if _in_view(t, camera)]
    if street.end is not None:
        boxes.append(_street_end(street, camera))
    _shadows(canvas, street, ground, boxes, trees)
    labels: list[tuple[int, bool]] = []
    for thing in boxes:
        label = Label(TRAIN_IDS[thing.name])
        if thing.countable:
            labels.append((label.train_id, thing.crowd))
            label.instance = len(labels)
        draw_thing(canvas, street, thing, label)
    for tree in trees:
        _draw_tree(canvas, street, tree)
    _camera_void(canvas, look)
    image = _expose(canvas.image, look, rng)
    return _scene(image, canvas, labels)


def _chunk_range(z: float) -> range:
    return range(int(np.floor((z - VIEW_BEHIND) / CHUNK)), int(np.floor((z + VIEW_AHEAD) / CHUNK)) + 1)


def _in_view(thing: Thing | Tree, camera: Camera) -> bool:
    """Near enough to matter and not where the camera's own car is."""
    dz = thing.z - camera.position[2]
    small = isinstance(thing, Tree) or thing.name != "building"
    if not -VIEW_BEHIND < dz < (THINGS_AHEAD if small else VIEW_AHEAD):
        return False
    if isinstance(thing, Thing) and thing.countable and abs(thing.x - camera.position[0]) < 2.2:
        reach = max(p.size[2] / 2 + abs(p.offset[2]) for p in thing.parts)
        return not (dz - reach < 7.0 and dz + reach > -4.0)
    return True


def _sky(canvas: Canvas, street: Street) -> None:
    camera = canvas.camera
    rays = camera.rays
    # Elevation by row, from the image's middle column: the yaw hardly changes it.
    middle = rays[:, rays.shape[1] // 2]
    elevation = np.clip(middle[:, 1] / np.hypot(middle[:, 1], middle[:, 2]), 0, 1)[:, None, None]
    horizon, zenith = street.sky
    colour = (horizon + (zenith - horizon) * np.sqrt(elevation)).astype(np.float32)
    # Clouds: noise in the direction of view, brighter and greyer than the sky.
    # Computed on every fourth pixel: clouds are smooth.
    coarse = rays[::4, ::4]
    a, b = coarse[..., 0] / np.maximum(coarse[..., 2], 0.05), coarse[..., 1] / np.maximum(coarse[..., 2], 0.05)
    cover = np.clip(tx.fbm(a.ravel() * 3, b.ravel() * 6, street.seed % 9973, 1.0, 3).reshape(a.shape) * 2.5
                    + (street.ambient - 0.5), 0, 1)
    cover = np.repeat(np.repeat(cover, 4, 0), 4, 1)[: rays.shape[0], : rays.shape[1], None]
    canvas.image[:] = colour * (1 - cover) + np.array([225, 228, 232]) * street.ambient * 1.2 * cover
    canvas.semantic[:] = TRAIN_IDS["sky"]


def _ground(canvas: Canvas, street: Street) -> np.ndarray:
    """Paint road, pavement and terrain where rays meet the ground; returns the ground mask."""
    camera = canvas.camera
    rays = camera.rays
    down = rays[..., 1] < -1e-4
    depth = camera.position[1] / -rays[..., 1][down]
    x = camera.position[0] + depth * rays[..., 0][down]
    z = camera.position[2] + depth * rays[..., 2][down]
    classes = _ground_classes(street, x, z, camera.position[2])
    colour = np.empty((len(x), 3))
    for train_id, paint in ((0, street.road), (1, street.paving), (9, street.terrain)):
        where = classes == train_id
        if where.any():
            colour[where] = paint(x[where], z[where])
    _markings(street, x, z, classes, colour)
    light = street.ambient + (1 - street.ambient) * max(street.sun[1], 0)
    canvas.image[down] = colour * light
    canvas.semantic[down] = classes
    canvas.depth[down] = depth
    return down


def _ground_classes(street: Street, x: np.ndarray, z: np.ndarray, camera_z: float) -> np.ndarray:
    offset = x - street.centre
    side = (offset > 0).astype(int)
    distance = np.abs(offset)
    verge = np.take(street.verge, side)
    pavement = verge + np.take(street.sidewalk, side)
    classes = np.full(len(x), TRAIN_IDS["sidewalk"], np.uint8)
    beyond = np.nonzero(distance > street.half_width + pavement)[0]
    fronts = sorted(f for k in _chunk_range(camera_z) for f in chunk(street.seed, k).front)
    for s in (0, 1):
        zones = [f for f in fronts if f[2] == s]
        if not zones:
            continue
        starts = np.array([f[0] for f in zones])
        ends = np.array([f[1] for f in zones])
        ids = np.array([f[3] for f in zones], np.uint8)
        here = beyond[side[beyond] == s]
        k = np.clip(np.searchsorted(starts, z[here], side="right") - 1, 0, len(zones) - 1)
        inside = (z[here] >= starts[k]) & (z[here] < ends[k])
        classes[here[inside]] = ids[k[inside]]
    classes[(distance > street.half_width) & (distance <= street.half_width + verge)] = TRAIN_IDS["terrain"]
    classes[distance <= street.half_width] = TRAIN_IDS["road"]
    return classes


def _markings(street: Street, x: np.ndarray, z: np.ndarray, classes: np.ndarray, colour: np.ndarray) -> None:
    """Lane lines, edge lines and tram rails, all part of the road."""
    road = classes == TRAIN_IDS["road"]
    offset = x - street.centre
    lanes = max(2, int(2 * street.half_width / 3.3))
    width = 2 * street.half_width / lanes
    lane_pos = (offset + street.half_width) / width
    near_line = np.abs(lane_pos - np.round(lane_pos)) * width < 0.08
    inner = (np.round(lane_pos) > 0) & (np.round(lane_pos) < lanes)
    dashed = (z % 9.0) < 3.5
    centre_line = np.abs(offset) < 0.08
    edge = np.abs(np.abs(offset) - (street.half_width - 0.35)) < 0.07
    paint = road & ((near_line & inner & (dashed | centre_line)) | edge) & (np.abs(offset) < street.half_width)
    worn = tx.fbm(x, z, street.seed % 7919, 0.7)
    colour[paint] = colour[paint] * 0.25 + street.marking * (0.75 - 0.5 * np.clip(worn[paint, None], 0, 1))
    if street.rails:
        for centre in (-1.65, 1.65):
            for rail in (-0.72, 0.72):
                steel = road & (np.abs(offset - centre - rail) < 0.05)
                colour[steel] = np.array([150, 150, 155]) if rail > 0 else np.array([60, 55, 50])


# A unit box's corners, bottom four then top four, each ordered around it.
_UNIT_BOX = np.array([[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5],
                      [-0.5, 1, -0.5], [0.5, 1, -0.5], [0.5, 1, 0.5], [-0.5, 1, 0.5]])
# Each face as corner indices (origin, +along, +along+up, +up), and its outward
# normal in the object's frame; the first is the object's -z face.
_FACES = np.array([(0, 1, 5, 4), (2, 3, 7, 6), (1, 2, 6, 5), (3, 0, 4, 7), (4, 5, 6, 7)])
_NORMALS = np.array([[0, 0, -1], [0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0]], float)


def _rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _corners(thing: Thing) -> np.ndarray:
    """[parts, 8, 3] world corners of each of a thing's boxes."""
    sizes = np.array([p.size for p in thing.parts], float)
    offsets = np.array([p.offset for p in thing.parts], float)
    local = _UNIT_BOX[None] * sizes[:, None] + offsets[:, None]
    return local @ _rotation(thing.yaw).T + [thing.x, 0, thing.z]


def draw_thing(canvas: Canvas, street: Street, thing: Thing, label: Label) -> None:
    camera = canvas.camera
    corners = _corners(thing)
    normals = _NORMALS @ _rotation(thing.yaw).T
    shades = street.ambient + (1 - street.ambient) * np.maximum(normals @ street.sun, 0.0)
    cam = camera.to_camera(corners.reshape(-1, 3)).reshape(corners.shape)
    for k, part in enumerate(thing.parts):
        if not _on_screen(camera, cam[k]):
            continue
        facing = np.einsum("fc,fc->f", normals, camera.position - corners[k][_FACES[:, 0]]) > 0
        for index in np.nonzero(facing)[0]:
            paint = {0: part.front, 4: part.top}.get(index) or part.paint
            canvas.face(corners[k][_FACES[index]], paint, label, float(shades[index]))


def _on_screen(camera: Camera, cam: np.ndarray) -> bool:
    """Whether a box (8 camera-frame corners) may cover a pixel."""
    if cam[:, 2].max() < NEAR:
        return False
    if cam[:, 2].min() < NEAR:
        return True  # it reaches past the camera: leave it to the clipping
    pixels = camera.project(cam)
    (x0, y0), (x1, y1) = pixels.min(0), pixels.max(0)
    return x1 > 0 and y1 > 0 and x0 < camera.width and y0 < camera.height and (x1 - x0) * (y1 - y0) > 0.25


def _draw_tree(canvas: Canvas, street: Street, tree: Tree) -> None:
    label = Label(TRAIN_IDS["vegetation"])
    trunk = Thing("vegetation", tree.x, tree.z, 0.0, [Part((0, 0, 0), (0.3, tree.trunk, 0.3), tree.bark)])
    draw_thing(canvas, street, trunk, label)
    amplitude, phase = tree.ragged
    orders = np.arange(3, 3 + len(amplitude))[:, None, None]

    def ragged(angle):
        return 1 + np.sum(amplitude[:, None, None] * np.sin(orders * angle[None] + phase[:, None, None]), axis=0)

    light = street.ambient + (1 - street.ambient) * max(street.sun[1], 0.3)
    canvas.blob(np.array([tree.x, tree.trunk, tree.z]), tree.radius, ragged,
                lambda a, b: tree.paint(a, b) * light, label)


def _street_end(street: Street, camera: Camera) -> Thing:
    """A row of facades across the street where it bends out of sight."""
    rng = np.random.default_rng(np.random.SeedSequence([street.seed, 2]))
    z = camera.position[2] + street.end
    return Thing("building", street.centre, z, 0.0, [Part((0, 0, 6), (300, rng.uniform(10, 30), 12), tx.facade(rng))])


def _shadows(canvas: Canvas, street: Street, ground: np.ndarray, boxes: list[Thing], trees: list[Tree]) -> None:
    """Darken the ground inside the sun's projection of each object."""
    sun = street.sun
    if sun[1] <= 0.05 or street.shadow <= 0:
        return
    dark = np.zeros(ground.shape, bool)
    eye = canvas.camera.position[2]
    casters = [_corners(b).reshape(-1, 3) for b in boxes if b.parts and b.z - eye < SHADOW_AHEAD]
    casters += [_tree_box(tree) for tree in trees if tree.z - eye < SHADOW_AHEAD]
    for points in casters:
        flat = points - (points[:, 1:2] / sun[1]) * sun
        hull = _hull(np.concatenate([flat, points[points[:, 1] < 1e-6]])[:, [0, 2]])
        polygon = np.stack([hull[:, 0], np.zeros(len(hull)), hull[:, 1]], axis=1)
        cam = clip_near(canvas.camera.to_camera(polygon))
        found = canvas.polygon(canvas.camera.project(cam)) if len(cam) >= 3 else None
        if found is not None:
            window, inside = found
            dark[window] |= inside
    dark &= ground
    canvas.image[dark] *= 1 - street.shadow


def _tree_box(tree: Tree) -> np.ndarray:
    r = tree.radius * 0.8
    base = np.array([[-r, 0, -r], [r, 0, -r], [r, 0, r], [-r, 0, r]]) + [tree.x, 0, tree.z]
    return np.concatenate([base + [0, tree.trunk - r, 0], base + [0, tree.trunk + r, 0]])


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of 2-D points, counter-clockwise (Andrew's monotone chain)."""
    pts = sorted(set(map(tuple, np.round(points, 4))))
    if len(pts) < 3:
        return np.array(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _camera_void(canvas: Canvas, look: Look) -> None:
    """The ego vehicle's bonnet and the rectification border: pixels with no label."""
    h, w = canvas.semantic.shape
    void = np.zeros((h, w), bool)
    if look.bonnet > 0:
        cols = (np.arange(w) + 0.5) / w * 2 - 1
        top = h * (1 - look.bonnet * (1 - 0.5 * cols**2))
        bonnet = np.arange(h)[:, None] + 0.5 >= top[None, :]
        rows = np.nonzero(bonnet)[0]
        # Paint with a reflection of the sky at its far edge.
        reflect = np.clip((rows - (h * (1 - look.bonnet))) / max(h * look.bonnet, 1), 0, 1)[:, None]
        canvas.image[bonnet] = look.bonnet_colour * (0.5 + 0.5 * reflect) + 60 * (1 - reflect)
        void |= bonnet
    if look.border:
        void[:, : look.border] = void[:, -look.border :] = True
        void[-look.border :, :] = True
        canvas.image[:, : look.border] = canvas.image[:, -look.border :] = 0
        canvas.image[-look.border :, :] = 0
    canvas.semantic[void] = VOID
    canvas.instance[void] = 0


def _expose(image: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    x = image * (look.exposure * look.white_balance).astype(np.float32)
    for _ in range(look.blur):
        x[1:-1] = 0.25 * x[:-2] + 0.5 * x[1:-1] + 0.25 * x[2:]
        x[:, 1:-1] = 0.25 * x[:, :-2] + 0.5 * x[:, 1:-1] + 0.25 * x[:, 2:]
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(look.noise)
    linear = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    curve = np.clip(255 * (np.arange(256) / 255) ** look.gamma + 0.5, 0, 255).astype(np.uint8)
    return curve[linear]


def _scene(image: np.ndarray, canvas: Canvas, labels: list[tuple[int, bool]]) -> Scene:
    """Number the visible instances 1..N; ones too small to learn become void."""
    h, w = canvas.semantic.shape
    least = max(6, round(MIN_THING_PIXELS * h * w / (256 * 512)))
    counts = np.bincount(canvas.instance.ravel(), minlength=len(labels) + 1)
    remap = np.zeros(len(labels) + 1, np.int64)
    classes, crowd = [], []
    for k, (train_id, is_crowd) in enumerate(labels, start=1):
        if counts[k] >= least:
            classes.append(train_id)
            crowd.append(is_crowd)
            remap[k] = len(classes)
    semantic = canvas.semantic.copy()
    small = (canvas.instance > 0) & (remap[canvas.instance] == 0)
    semantic[small] = VOID
    instance = remap[canvas.instance].astype(np.uint16)
    return Scene(image=image, semantic=semantic, instance=instance, instance_classes=classes, crowd=crowd)
