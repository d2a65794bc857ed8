"""Draw one procedural person figure with Pillow, and know its box and 17 COCO keypoints exactly.

The skeleton lives in body units (height 1, y down, origin between the hips); a pose is a set of limb angles.
`draw_person` maps it into the image with a scale, a rotation (lying persons) and a position, draws the body
parts back to front, and returns the box of everything it drew plus the keypoints with COCO visibility
(2 visible, 1 inside the image but hidden — the face seen from behind —, 0 outside the image: x = y = 0).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from curation.synthweb.identities import COLOURS, HAIR_COLOURS, Identity

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# Index of each keypoint's mirror image (for horizontal flips).
FLIP_INDEX = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
SKELETON_Y = {"eyes": -0.445, "nose": -0.425, "head": -0.435, "neck": -0.37, "shoulder": -0.335, "hip": 0.0}
HEAD_RX, HEAD_RY = 0.052, 0.064
UPPER_ARM, FOREARM, THIGH, SHIN = 0.165, 0.15, 0.235, 0.225


@dataclass(frozen=True)
class Pose:
    back_view: bool
    # Per body side (image-left, image-right): outward angle from straight down, in degrees, and the extra bend
    # at the elbow/knee; the length factor < 1 imitates a limb swung towards or away from the camera.
    arm_angles: tuple[float, float]
    elbow_bends: tuple[float, float]
    arm_lengths: tuple[float, float]
    leg_angles: tuple[float, float]
    knee_bends: tuple[float, float]
    leg_lengths: tuple[float, float]


def random_pose(rng: random.Random) -> Pose:
    kind = rng.choices(("stand", "walk", "wave", "hips"), weights=(5, 5, 1, 1))[0]
    arms = [rng.uniform(-4, 22), rng.uniform(-4, 22)]
    bends = [rng.uniform(-25, 15), rng.uniform(-25, 15)]
    arm_len = [1.0, 1.0]
    leg_len = [1.0, 1.0]
    if kind == "walk":
        arm_len = [rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)]
        leg_len = [rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)]
    elif kind == "wave":
        side = rng.randrange(2)
        arms[side], bends[side] = rng.uniform(110, 160), rng.uniform(-40, 10)
    elif kind == "hips":
        arms = [rng.uniform(30, 45), rng.uniform(30, 45)]
        bends = [-rng.uniform(85, 110), -rng.uniform(85, 110)]
    return Pose(
        back_view=rng.random() < 0.2,
        arm_angles=(arms[0], arms[1]),
        elbow_bends=(bends[0], bends[1]),
        arm_lengths=(arm_len[0], arm_len[1]),
        leg_angles=(rng.uniform(-3, 10), rng.uniform(-3, 10)),
        knee_bends=(rng.uniform(-8, 8), rng.uniform(-8, 8)),
        leg_lengths=(leg_len[0], leg_len[1]),
    )


@dataclass
class DrawnPerson:
    bbox: tuple[float, float, float, float] | None  # x1, y1, x2, y2 of what is visible; None: all outside
    keypoints: list[tuple[float, float, int]]  # 17 × (x, y, visibility), COCO order
    silhouette: Image.Image | None = None  # the figure's mask, when asked for (to subtract what hides it)


class _Pen:
    """Maps body units to image pixels and draws, recording the extent of every stroke."""

    def __init__(self, draw: ImageDraw.ImageDraw, height_px: float, angle_deg: float, origin: tuple[float, float]):
        self.draw = draw
        self.scale = height_px
        self.cos = math.cos(math.radians(angle_deg))
        self.sin = math.sin(math.radians(angle_deg))
        self.ox, self.oy = origin
        self.x1 = self.y1 = math.inf
        self.x2 = self.y2 = -math.inf
        self.strokes: list[tuple] = []  # replayed on a mask when the figure crosses the image border

    def map(self, p: tuple[float, float]) -> tuple[float, float]:
        x, y = p[0] * self.scale, p[1] * self.scale
        return (self.ox + x * self.cos - y * self.sin, self.oy + x * self.sin + y * self.cos)

    def _extend(self, points, radius: float) -> None:
        for x, y in points:
            self.x1, self.x2 = min(self.x1, x - radius), max(self.x2, x + radius)
            self.y1, self.y2 = min(self.y1, y - radius), max(self.y2, y + radius)

    def limb(self, points, width: float, colour) -> None:
        pts = [self.map(p) for p in points]
        w = max(1, round(width * self.scale))
        self._stroke(self.draw, pts, w, colour)
        self.strokes.append((pts, w))
        self._extend(pts, w / 2)

    @staticmethod
    def _stroke(draw: ImageDraw.ImageDraw, pts, w: int, colour) -> None:
        if w == 0:
            draw.polygon(pts, fill=colour)
            return
        draw.line(pts, fill=colour, width=w, joint="curve")
        r = w / 2
        if w >= 3:  # round end caps; thinner strokes need none
            for x, y in (pts[0], pts[-1]):
                draw.ellipse((x - r + 0.5, y - r + 0.5, x + r - 0.5, y + r - 0.5), fill=colour)

    def polygon(self, points, colour) -> None:
        pts = [self.map(p) for p in points]
        self.draw.polygon(pts, fill=colour)
        self.strokes.append((pts, 0))
        self._extend(pts, 0.5)

    def silhouette(self, size: tuple[int, int]) -> Image.Image:
        """The figure's pixels as a mask (L, 255 inside), redrawn from its strokes."""
        mask = Image.new("L", size, 0)
        draw = ImageDraw.Draw(mask)
        for pts, width in self.strokes:
            self._stroke(draw, pts, width, 255)
        return mask

    def visible_box(self, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """The box of what is inside the image: exact extents when all was inside, else from a redrawn mask."""
        w, h = size
        if self.x1 >= 0 and self.y1 >= 0 and self.x2 <= w and self.y2 <= h:
            return (self.x1, self.y1, self.x2, self.y2)
        box = self.silhouette(size).getbbox()
        if box is None:
            return None
        # Pixel extents → the same continuous convention as the unclipped extents, kept inside those.
        return (max(float(box[0]), self.x1), max(float(box[1]), self.y1),
                min(float(box[2]), self.x2), min(float(box[3]), self.y2))

    def ellipse(self, centre, rx: float, ry: float, colour, start: float = 0.0, stop: float = 360.0) -> None:
        steps = 14
        pts = [
            (centre[0] + rx * math.cos(math.radians(a)), centre[1] + ry * math.sin(math.radians(a)))
            for a in (start + (stop - start) * i / steps for i in range(steps + 1))
        ]
        self.polygon(pts, colour)


def _jitter(rgb, rng: random.Random, amount: int = 14):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _limb_end(start, angle_deg: float, length: float, side: int):
    a = math.radians(angle_deg)
    return (start[0] + side * math.sin(a) * length, start[1] + math.cos(a) * length)


def draw_person(
    draw: ImageDraw.ImageDraw,
    image_size: tuple[int, int],
    identity: Identity,
    pose: Pose,
    height_px: float,
    feet_xy: tuple[float, float],
    angle_deg: float,
    rng: random.Random,
    material: tuple[int, int, int] | None = None,
    silhouette: bool = False,
) -> DrawnPerson:
    """Draw `identity` in `pose`, `height_px` tall; `feet_xy` is where the point below the hips between the feet
    lands in the image before rotation by `angle_deg` about it (0: upright, ±90: lying).

    `material`: draw a figure that is not a person (a mannequin, a statue): skin, hair and clothes all in shades
    of this one colour, and no face. `silhouette`: also return the figure's mask."""
    # The origin between the hips sits 0.5 body units above the feet.
    ox = feet_xy[0] + 0.5 * height_px * math.sin(math.radians(angle_deg))
    oy = feet_xy[1] - 0.5 * height_px * math.cos(math.radians(angle_deg))
    pen = _Pen(draw, height_px, angle_deg, (ox, oy))
    skin = _jitter(identity.skin, rng, 8)
    top = _jitter(COLOURS[identity.top_colour], rng)
    bottom = _jitter(COLOURS[identity.bottom_colour], rng)
    shoes = _jitter(COLOURS[identity.shoe_colour], rng)
    hair = _jitter(HAIR_COLOURS[identity.hair_colour], rng, 8)
    dark = (30, 28, 30)
    if material is not None:  # parts differ by a shade only, as moulded or carved surfaces do
        skin, top, bottom, shoes, hair, dark = (_jitter(material, rng, 10) for _ in range(6))
    # side: +1 for the image-right body side. Facing the camera, the person's left is on the image right.
    left_side = -1 if pose.back_view else 1
    sh_half = 0.098 * identity.build
    hip_half = 0.068 + (0.01 if identity.gender == "woman" else 0.0)
    shoulder_y, hip_y = SKELETON_Y["shoulder"], SKELETON_Y["hip"]

    joints = {}
    for i, side in enumerate((-1, 1)):
        name = "left" if side == left_side else "right"
        shoulder = (side * sh_half, shoulder_y)
        elbow = _limb_end(shoulder, pose.arm_angles[i], UPPER_ARM * pose.arm_lengths[i], side)
        wrist = _limb_end(elbow, pose.arm_angles[i] + pose.elbow_bends[i], FOREARM * pose.arm_lengths[i], side)
        hip = (side * hip_half, hip_y)
        knee = _limb_end(hip, pose.leg_angles[i], THIGH * pose.leg_lengths[i], side)
        ankle = _limb_end(knee, pose.leg_angles[i] + pose.knee_bends[i], SHIN * pose.leg_lengths[i], side)
        joints.update({f"{name}_shoulder": shoulder, f"{name}_elbow": elbow, f"{name}_wrist": wrist,
                       f"{name}_hip": hip, f"{name}_knee": knee, f"{name}_ankle": ankle})
    head = (0.0, SKELETON_Y["head"])
    joints["nose"] = (0.0, SKELETON_Y["nose"])
    joints["left_eye"] = (left_side * 0.021, SKELETON_Y["eyes"])
    joints["right_eye"] = (-left_side * 0.021, SKELETON_Y["eyes"])
    joints["left_ear"] = (left_side * HEAD_RX, SKELETON_Y["head"])
    joints["right_ear"] = (-left_side * HEAD_RX, SKELETON_Y["head"])

    side_names = ("left", "right") if left_side == -1 else ("right", "left")  # image-left first
    # Back to front: long hair and a backpack seen from the front, legs, shoes, torso, arms, head, accessories.
    if identity.hair_length == "long" and not pose.back_view:
        pen.polygon([(-0.062, -0.45), (0.062, -0.45), (0.07, -0.29), (-0.07, -0.29)], hair)
    if identity.backpack and not pose.back_view:
        pen.polygon([(-sh_half - 0.018, -0.32), (sh_half + 0.018, -0.32), (sh_half + 0.02, -0.1),
                     (-sh_half - 0.02, -0.1)], dark)
    leg_w = 0.068 if identity.bottom_type != "shorts" else 0.06
    for name in side_names:
        hip, knee, ankle = joints[f"{name}_hip"], joints[f"{name}_knee"], joints[f"{name}_ankle"]
        if identity.bottom_type == "trousers":
            pen.limb([hip, knee, ankle], leg_w, bottom)
        else:
            pen.limb([hip, knee, ankle], leg_w * 0.75, skin)
            if identity.bottom_type == "shorts":
                mid = ((hip[0] + knee[0]) * 0.45 + hip[0] * 0.1, (hip[1] + knee[1]) * 0.5)
                pen.limb([hip, mid], leg_w + 0.01, bottom)
        pen.ellipse((ankle[0] + (0.012 if ankle[0] > 0 else -0.012), ankle[1] + 0.022), 0.038, 0.022, shoes)
    if identity.bottom_type == "skirt":
        knee_y = max(joints["left_knee"][1], joints["right_knee"][1]) - 0.02
        pen.polygon([(-hip_half - 0.03, -0.02), (hip_half + 0.03, -0.02), (hip_half + 0.09, knee_y),
                     (-hip_half - 0.09, knee_y)], bottom)
    elif identity.bottom_type != "shorts":
        pen.polygon([(-hip_half - 0.032, -0.03), (hip_half + 0.032, -0.03), (hip_half + 0.03, 0.04),
                     (-hip_half - 0.03, 0.04)], bottom)
    torso_bottom = 0.17 if identity.top_type == "coat" else 0.02
    flare = 0.03 if identity.top_type == "coat" else 0.0
    torso = [(-sh_half - 0.012, shoulder_y - 0.012), (sh_half + 0.012, shoulder_y - 0.012),
             (hip_half + 0.022 + flare, torso_bottom), (-hip_half - 0.022 - flare, torso_bottom)]
    pen.polygon(torso, top)
    if identity.top_type in ("jacket", "coat") and not pose.back_view:
        inner = _jitter((235, 235, 230) if identity.top_colour != "white" else (40, 40, 40), rng)
        inner = inner if material is None else _jitter(material, rng, 10)
        pen.polygon([(-0.025, shoulder_y), (0.025, shoulder_y), (0.0, -0.18)], inner)
        pen.limb([(0.0, -0.18), (0.0, torso_bottom - 0.01)], 0.006, dark)
    if identity.backpack and pose.back_view:
        pen.polygon([(-sh_half + 0.01, -0.31), (sh_half - 0.01, -0.31), (sh_half - 0.005, -0.08),
                     (-sh_half + 0.005, -0.08)], dark)
    elif identity.backpack:
        for side in (-1, 1):
            pen.limb([(side * (sh_half - 0.02), shoulder_y), (side * (sh_half - 0.025), -0.12)], 0.014, dark)
    long_sleeves = identity.top_type != "t-shirt"
    for name in side_names:
        shoulder, elbow, wrist = joints[f"{name}_shoulder"], joints[f"{name}_elbow"], joints[f"{name}_wrist"]
        if long_sleeves:
            pen.limb([shoulder, elbow, wrist], 0.05, top)
        else:
            pen.limb([elbow, wrist], 0.038, skin)
            pen.limb([shoulder, ((shoulder[0] + elbow[0]) / 2, (shoulder[1] + elbow[1]) / 2)], 0.054, top)
        pen.ellipse((wrist[0], wrist[1] + 0.01), 0.021, 0.021, skin)
    if identity.shoulder_bag:
        strap_side = 1 if rng.random() < 0.5 else -1
        pen.limb([(-strap_side * sh_half * 0.7, shoulder_y), (strap_side * (hip_half + 0.04), -0.02)], 0.01, dark)
        bag = _jitter(COLOURS["brown"], rng)
        x = strap_side * (hip_half + 0.04)
        pen.polygon([(x - 0.04, -0.05), (x + 0.04, -0.05), (x + 0.045, 0.04), (x - 0.045, 0.04)], bag)
    pen.limb([(0.0, SKELETON_Y["neck"] - 0.02), (0.0, shoulder_y)], 0.04, skin)
    if identity.hair_length == "bald":
        pen.ellipse(head, HEAD_RX, HEAD_RY, skin)
    elif pose.back_view:
        pen.ellipse(head, HEAD_RX + 0.004, HEAD_RY + 0.004, hair)
    else:
        pen.ellipse(head, HEAD_RX + 0.006, HEAD_RY + 0.006, hair)
        pen.ellipse((head[0], head[1] + 0.012), HEAD_RX - 0.003, HEAD_RY - 0.01, skin)
    if not pose.back_view and material is None:
        for eye in ("left_eye", "right_eye"):
            ex, ey = joints[eye]
            pen.ellipse((ex, ey), 0.006, 0.005, dark)
        if identity.glasses:
            pen.limb([(-0.04, SKELETON_Y["eyes"]), (0.04, SKELETON_Y["eyes"])], 0.008, dark)
        pen.limb([(-0.012, -0.405), (0.012, -0.405)], 0.005, (150, 60, 60))
    if identity.hat:
        hat = _jitter(COLOURS[identity.hat_colour], rng)
        pen.ellipse((head[0], head[1] - 0.03), HEAD_RX + 0.008, HEAD_RY - 0.015, hat, 180, 360)
        pen.limb([(-HEAD_RX - 0.02, head[1] - 0.03), (HEAD_RX + 0.02, head[1] - 0.03)], 0.012, hat)

    width, height = image_size
    keypoints = []
    for name in KEYPOINT_NAMES:
        x, y = pen.map(joints[name])
        if 0 <= x < width and 0 <= y < height:
            hidden = pose.back_view and name in ("nose", "left_eye", "right_eye")
            keypoints.append((round(x, 1), round(y, 1), 1 if hidden else 2))
        else:
            keypoints.append((0.0, 0.0, 0))
    visible = pen.visible_box(image_size)
    return DrawnPerson(bbox=tuple(round(v, 1) for v in visible) if visible else None, keypoints=keypoints,
                       silhouette=pen.silhouette(image_size) if silhouette else None)
