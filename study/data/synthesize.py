"""A deterministic synthetic pedestrian data set in the Market-1501 layout.

An identity is a set of clothes, accessories and a body shape; a camera is a viewpoint
(front/back/side, mirrored or not), a background, an illumination and a blur; every image adds
pose, crop, scale and occlusion jitter. Camera effects are strong, so matching raw pixels fails
while a network that learns what stays the same across cameras does well.

    python -m study.data.synthesize runs/data/synth --identities 120 --cameras 4 --seed 0

One module of ~400 lines because it is one generator read top to bottom: the data set, an identity,
a camera, then the drawing of one image; split, its parts would only call each other.
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from study.errors import UserError, cli

HEIGHT, WIDTH = 128, 64
JPEG_QUALITY = 90
IMAGES_PER_CAMERA = (3, 6)
VIEWS = ("front", "back", "side")
# Separate random streams, so that no choice shifts another (e.g. adding a camera).
_IDENTITY, _CAMERA, _IMAGE, _COUNT = 1, 2, 3, 4

Color = tuple[int, int, int]


def synthesize(out: Path, identities: int = 120, cameras: int = 4, seed: int = 0) -> Path:
    """Write the synthetic data set into the new folder ``out`` and return it.

    The first half of the identities (pids 1..) are for training, the second half for testing:
    one query image per test identity and camera, its other images in the gallery. The same
    arguments always give byte-identical files.

    For example, ``synthesize(Path("runs/data/ids120-cams4-seed0"), identities=120, cameras=4, seed=0)``.
    """
    out = Path(out)
    _check_arguments(identities, cameras, seed)
    if out.exists():
        raise UserError(f"{str(out)!r} already exists; remove it or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    try:
        for folder in ("bounding_box_train", "query", "bounding_box_test"):
            (temporary / folder).mkdir(parents=True)
        train_identities = identities // 2
        jobs = [(temporary, seed, pid, cameras, pid <= train_identities) for pid in range(1, identities + 1)]
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            list(pool.map(lambda job: _write_identity(*job), jobs))
        (temporary / "README.txt").write_text(_readme(identities, cameras, seed, train_identities))
        try:
            temporary.rename(out)
        except OSError:
            if not out.is_dir():  # otherwise another process wrote the same data set first
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return out


def synthetic_name(identities: int, cameras: int, seed: int) -> str:
    """The folder name of a synthetic data set, e.g. ids120-cams4-seed0."""
    return f"ids{identities}-cams{cameras}-seed{seed}"


def _check_arguments(identities: int, cameras: int, seed: int) -> None:
    if not 2 <= identities <= 9999:
        raise UserError(f"identities must be between 2 and 9999 (half train, half test), got {identities}")
    if not 2 <= cameras <= 9:
        raise UserError(f"cameras must be between 2 and 9, got {cameras}")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")


def _write_identity(out: Path, seed: int, pid: int, cameras: int, train: bool) -> None:
    identity = _identity(seed, pid)
    for camid in range(1, cameras + 1):
        camera = _camera(seed, camid)
        count = np.random.default_rng([seed, _COUNT, pid, camid]).integers(*IMAGES_PER_CAMERA, endpoint=True)
        for n in range(count):
            image = _render(identity, camera, np.random.default_rng([seed, _IMAGE, pid, camid, n]))
            folder = "bounding_box_train" if train else ("query" if n == 0 else "bounding_box_test")
            image.save(out / folder / f"{pid:04d}_c{camid}_{n:04d}.jpg", quality=JPEG_QUALITY)


# Identity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    upper: Color
    upper_second: Color
    upper_texture: str  # plain, hstripes, vstripes, checks
    stripe_period: int
    logo: Color | None  # a chest print, seen from the front only
    sleeves: float  # fraction of the arm covered
    lower: Color
    lower_kind: str  # trousers, shorts, skirt
    shoes: Color
    skin: Color
    hair: Color
    long_hair: bool
    hat: Color | None
    bag: str  # none, backpack, shoulder
    bag_color: Color
    height: float  # body height, fraction of the frame
    width: float  # shoulder width factor
    legs: float  # leg length, fraction of the body


def _identity(seed: int, pid: int) -> Identity:
    rng = np.random.default_rng([seed, _IDENTITY, pid])
    skin_tone = rng.uniform(0.25, 0.95)
    hair_value = rng.choice([0.1, 0.2, 0.35, 0.55, 0.8])
    return Identity(
        upper=_color(rng),
        upper_second=_color(rng),
        upper_texture=str(rng.choice(["plain", "plain", "hstripes", "vstripes", "checks"])),
        stripe_period=int(rng.integers(3, 8)),
        logo=_color(rng) if rng.random() < 0.35 else None,
        sleeves=float(rng.choice([0.35, 1.0, 1.0])),
        lower=_color(rng, saturation=0.5),
        lower_kind=str(rng.choice(["trousers", "trousers", "shorts", "skirt"])),
        shoes=_color(rng, saturation=0.3),
        skin=_hsv(0.07, 0.45 - 0.15 * skin_tone, skin_tone),
        hair=_hsv(0.08, 0.5, hair_value),
        long_hair=bool(rng.random() < 0.3),
        hat=_color(rng) if rng.random() < 0.25 else None,
        bag=str(rng.choice(["none", "none", "backpack", "shoulder"])),
        bag_color=_color(rng, saturation=0.6),
        height=float(rng.uniform(0.8, 0.95)),
        width=float(rng.uniform(0.8, 1.25)),
        legs=float(rng.uniform(0.43, 0.53)),
    )


def _color(rng: np.random.Generator, saturation: float = 1.0) -> Color:
    # A third of clothes are achromatic (black, grey, white), the rest any hue.
    if rng.random() < 0.3:
        return _hsv(0.0, 0.0, rng.uniform(0.08, 0.95))
    return _hsv(rng.random(), saturation * rng.uniform(0.35, 1.0), rng.uniform(0.25, 0.95))


def _hsv(hue: float, saturation: float, value: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


# Camera ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    view: str
    mirror: bool
    squash: float  # horizontal scale of the person
    scale: float  # person height relative to the frame
    gain: float
    cast: tuple[float, float, float]
    gamma: float
    blur: float
    noise: float
    background: np.ndarray  # float32 [H + 32, W + 32, 3] in [0, 1]; each image shows a window


@functools.lru_cache(maxsize=64)
def _camera(seed: int, camid: int) -> Camera:
    rng = np.random.default_rng([seed, _CAMERA, camid])
    view = VIEWS[(camid - 1 + seed) % len(VIEWS)]
    return Camera(
        view=view,
        mirror=bool(rng.random() < 0.5),
        squash=float(rng.uniform(0.62, 0.75) if view == "side" else rng.uniform(0.8, 1.05)),
        scale=float(rng.uniform(0.72, 1.0)),
        gain=float(rng.uniform(0.55, 1.35)),
        cast=tuple(float(c) for c in rng.uniform(0.7, 1.3, size=3)),
        gamma=float(rng.uniform(0.7, 1.4)),
        blur=float(rng.choice([0.0, 0.6, 1.0, 1.5])),
        noise=float(rng.uniform(0.01, 0.05)),
        background=_background(rng, camid),
    )


def _background(rng: np.random.Generator, camid: int) -> np.ndarray:
    height, width = HEIGHT + 32, WIDTH + 32
    a, b, floor = (np.array(_color(rng), np.float32) / 255 for _ in range(3))
    y, x = np.mgrid[0:height, 0:width]
    kind = (camid - 1) % 4
    period = int(rng.integers(8, 20))
    if kind == 0:  # wall with a horizontal band
        pattern = ((y // period) % 3 == 0).astype(np.float32)
    elif kind == 1:  # columns
        pattern = ((x // period) % 2).astype(np.float32)
    elif kind == 2:  # tiles
        pattern = (((x // period) + (y // period)) % 2).astype(np.float32)
    else:  # foliage: smooth random blobs
        coarse = Image.fromarray((rng.random((6, 4)) * 255).astype(np.uint8))
        pattern = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255
    image = a + (b - a) * pattern[..., None]
    horizon = int(rng.uniform(0.55, 0.8) * height)
    shade = np.linspace(0.75, 1.1, height - horizon, dtype=np.float32)[:, None, None]
    image[horizon:] = floor * shade
    return image


# Image ----------------------------------------------------------------------------------------


def _render(identity: Identity, camera: Camera, rng: np.random.Generator) -> Image.Image:
    person = _draw_person(identity, camera.view, rng)
    if camera.mirror:
        person = person.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = camera.scale * rng.uniform(0.93, 1.07)
    size = (max(8, round(WIDTH * scale * camera.squash)), round(HEIGHT * scale))
    person = person.resize(size, Image.Resampling.BILINEAR)
    dy, dx = rng.integers(0, 33, size=2)
    frame = Image.fromarray((camera.background[dy : dy + HEIGHT, dx : dx + WIDTH] * 255).astype(np.uint8))
    left = (WIDTH - size[0]) // 2 + int(rng.integers(-6, 7))
    top = HEIGHT - size[1] - int(rng.integers(0, 8)) + int(rng.integers(-4, 5))
    frame.paste(person, (left, top), person)
    if rng.random() < 0.35:
        _occlude(frame, rng)
    pixels = np.asarray(frame, np.float32) / 255
    pixels = pixels * np.array(camera.cast, np.float32) * camera.gain * rng.uniform(0.9, 1.1)
    pixels = np.clip(pixels, 0, 1) ** camera.gamma
    pixels = pixels + rng.normal(0, camera.noise, pixels.shape).astype(np.float32)
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8))
    if camera.blur:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur))
    return image


def _occlude(frame: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(frame)
    color = _color(rng)
    if rng.random() < 0.5:  # something in front: a bench, a car, a railing
        top = int(rng.uniform(0.65, 0.85) * HEIGHT)
        draw.rectangle((0, top, WIDTH, HEIGHT), fill=color)
    else:  # a pole or another passer-by at the side
        width = int(rng.integers(6, 16))
        left = int(rng.choice([rng.integers(-4, 12), rng.integers(WIDTH - 12 - width, WIDTH - width + 4)]))
        draw.rectangle((left, 0, left + width, HEIGHT), fill=color)


def _draw_person(identity: Identity, view: str, rng: np.random.Generator) -> Image.Image:
    """The person on a transparent [128 x 64] canvas, feet at the bottom, facing the camera's view."""
    person = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
    draw = ImageDraw.Draw(person)
    body = HEIGHT * identity.height
    cx = WIDTH / 2 + rng.uniform(-1.5, 1.5)
    feet = HEIGHT - 3
    top = feet - body
    radius = body * 0.065
    shoulders = top + 2 * radius + body * 0.025
    hips = feet - body * identity.legs
    half = body * 0.12 * identity.width
    hip_half = half * 0.8
    arm = max(2, round(half * 0.45))
    leg = max(3, round(hip_half * 0.95))
    swing = rng.uniform(-0.35, 0.35)
    stride = rng.uniform(-0.25, 0.25) * body * 0.3

    if identity.long_hair:
        draw.rectangle((cx - radius, top + radius, cx + radius, shoulders + body * 0.1), fill=identity.hair)
    if identity.bag == "backpack" and view == "side":
        draw.rectangle((cx - half - 5, shoulders + 2, cx - half + 2, hips - 4), fill=identity.bag_color)

    # Legs (clothing over skin), then shoes.
    for side in (-1, 1):
        hip = (cx + side * hip_half * 0.5, hips)
        foot = (cx + side * hip_half * 0.5 + side * stride, feet - 2)
        knee = (hip[0] + 0.45 * (foot[0] - hip[0]), hip[1] + 0.45 * (foot[1] - hip[1]))
        draw.line((hip, foot), fill=identity.skin, width=leg)
        draw.line((hip, foot if identity.lower_kind == "trousers" else knee), fill=identity.lower, width=leg)
        draw.ellipse((foot[0] - leg * 0.7, feet - 4, foot[0] + leg * 0.7, feet), fill=identity.shoes)
    if identity.lower_kind == "skirt":
        knee = hips + body * identity.legs * 0.45
        polygon = [(cx - hip_half, hips - 1), (cx + hip_half, hips - 1)]
        draw.polygon(
            [*polygon, (cx + hip_half * 1.5, knee), (cx - hip_half * 1.5, knee)], fill=identity.lower
        )

    # Torso and sleeves through one mask, so textures run across both.
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask_draw = ImageDraw.Draw(mask)
    mask_draw.polygon(
        [
            (cx - half, shoulders),
            (cx + half, shoulders),
            (cx + hip_half, hips + 2),
            (cx - hip_half, hips + 2),
        ],
        fill=255,
    )
    length = body * 0.36
    hands = []
    for side in (-1, 1):
        shoulder = (cx + side * (half - arm / 2), shoulders + arm / 2)
        angle = side * 0.12 + swing * side
        hand = (shoulder[0] + length * np.sin(angle), shoulder[1] + length * np.cos(angle))
        sleeve = (
            shoulder[0] + identity.sleeves * (hand[0] - shoulder[0]),
            shoulder[1] + identity.sleeves * (hand[1] - shoulder[1]),
        )
        draw.line((shoulder, hand), fill=identity.skin, width=arm)
        mask_draw.line((shoulder, sleeve), fill=255, width=arm)
        hands.append(hand)
    person.paste(_texture(identity), (0, 0), mask)
    for hand in hands:
        draw.ellipse(
            (hand[0] - arm / 2, hand[1] - arm / 2, hand[0] + arm / 2, hand[1] + arm / 2), fill=identity.skin
        )

    # Head, hair, hat.
    head = (cx - radius, top, cx + radius, top + 2 * radius)
    draw.rectangle((cx - radius * 0.4, top + radius, cx + radius * 0.4, shoulders + 1), fill=identity.skin)
    draw.ellipse(head, fill=identity.hair if view == "back" else identity.skin)
    if view != "back":
        draw.chord((head[0] - 1, head[1] - 1, head[2] + 1, head[3]), 180, 360, fill=identity.hair)
    if identity.hat is not None:
        draw.chord((head[0] - 1, head[1] - 2, head[2] + 1, head[3] - 2), 180, 360, fill=identity.hat)
        draw.rectangle((head[0] - 2, top + radius - 2, head[2] + 2, top + radius), fill=identity.hat)

    # Things seen from one side only.
    if identity.logo is not None and view == "front":
        draw.rectangle(
            (cx - half * 0.4, shoulders + 4, cx + half * 0.4, shoulders + 4 + half * 0.6), fill=identity.logo
        )
    if identity.bag == "backpack" and view == "back":
        draw.rectangle((cx - half * 0.75, shoulders + 3, cx + half * 0.75, hips - 3), fill=identity.bag_color)
    if identity.bag == "backpack" and view == "front":
        for side in (-1, 1):
            x = cx + side * half * 0.55
            draw.line(((x, shoulders), (x, hips - 6)), fill=identity.bag_color, width=2)
    if identity.bag == "shoulder":
        draw.line(((cx - half * 0.7, shoulders), (cx + half, hips - 2)), fill=identity.bag_color, width=2)
        draw.rectangle((cx + half - 2, hips - 8, cx + half + 6, hips + 4), fill=identity.bag_color)
    return _shade(person, cx, half)


@functools.lru_cache(maxsize=256)
def _texture(identity: Identity) -> Image.Image:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    period = identity.stripe_period
    second = {
        "plain": np.zeros_like(y, bool),
        "hstripes": (y // period) % 2 == 1,
        "vstripes": (x // period) % 2 == 1,
        "checks": ((x // period) + (y // period)) % 2 == 1,
    }[identity.upper_texture]
    pixels = np.where(second[..., None], identity.upper_second, identity.upper).astype(np.uint8)
    return Image.fromarray(pixels)


def _shade(person: Image.Image, cx: float, half: float) -> Image.Image:
    # Darken towards the sides so that the body looks round.
    pixels = np.asarray(person, np.float32)
    x = np.arange(WIDTH, dtype=np.float32)
    shade = 1 - 0.35 * np.clip(np.abs(x - cx) / (half * 1.4), 0, 1) ** 2
    pixels[..., :3] *= shade[None, :, None]
    return Image.fromarray(pixels.astype(np.uint8), "RGBA")


def _readme(identities: int, cameras: int, seed: int, train_identities: int) -> str:
    return f"""Synthetic pedestrian data set made by `python -m study.data.synthesize` (rollback-study).

identities: {identities} (pids 1..{train_identities} train, {train_identities + 1}..{identities} test)
cameras: {cameras}
seed: {seed}

Market-1501 layout: bounding_box_train/, query/ (one image per test identity and camera),
bounding_box_test/ (the other images of the test identities). File names PPPP_cC_NNNN.jpg:
identity, camera, image number. {WIDTH}x{HEIGHT} JPEG, quality {JPEG_QUALITY}.

An identity is clothing colours and textures, accessories (hat, bag) and a body shape.
A camera is a viewpoint (front, back or side; maybe mirrored), a background, an illumination,
a colour cast and a blur. Each image adds pose, scale, crop and occlusion jitter.
The same arguments always give byte-identical files.
"""


@cli
def main(argv: list[str] | None = None) -> None:
    """Command line: write a synthetic data set into OUT."""
    parser = argparse.ArgumentParser(
        prog="python -m study.data.synthesize", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--identities", type=int, default=120, help="identities to draw (default 120)")
    parser.add_argument("--cameras", type=int, default=4, help="cameras per identity (default 4)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed, the same images (default 0)"
    )
    args = parser.parse_args(argv)
    out = synthesize(args.out, args.identities, args.cameras, args.seed)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
