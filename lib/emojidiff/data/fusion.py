"""SVG-level fusion of two emoji faces: A's disc, eyes and props with B's mouth moved onto A's face."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from emojidiff.data.emoji_sources import EmojiSourceError, Face, face_body, render_svg, style_data, wrap_svg
from emojidiff.data.svgpath import SvgPathError, prefix_ids, split_subpaths

ANALYSIS_PX = 128  # pieces are classified on masks rendered at this size
DRAWABLE = {"path", "circle", "ellipse", "rect", "polygon", "polyline", "line", "use", "image", "text", "g"}
DEF_TAGS = {"defs", "linearGradient", "radialGradient", "clipPath", "mask", "filter", "pattern", "symbol", "style"}
ATOMIC_GROUP = {"clip-path", "mask", "opacity", "filter"}  # a group with these renders as one unit: never split it

# Per-face fixes per style, keyed by codepoints: "split" moves the upper/lower boundary (share of the disc height,
# from its top); "upper"/"lower" force pieces (by drawing order in the analysed face) to one side.
OVERRIDES: dict[str, dict[str, dict]] = {
    "noto": {
        "1f970": {"upper": [8, 9, 10, 11], "lower": [3],
                  "why": "the smile sits high among hearts; hearts go with the eyes"},
        "1f92a": {"lower": [6, 9, 10], "why": "the wide grin reaches up between the eyes; keep it with the tongue"},
        "1f9d0": {"upper": [11, 12, 13, 14, 15, 20, 21, 22, 23, 24],
                  "why": "(not core) the monocle's chain hangs to the chin; keep it with the monocle"},
        "1f974": {"lower": [10, 12], "why": "the ends of the wavy mouth sit as high as the cheeks"},
        "1fae2": {"lower": [3, 4], "why": "(not core) the hand over the mouth is drawn right after the disc"},
        "1f92b": {"lower": [5], "why": "(not core) the small mouth sits high, above the finger"},
    },
    "twemoji": {
        "1f970": {"upper": [5, 6, 8, 9], "why": "the lower hearts go with the eyes, not with the smile"},
        "1f633": {"upper": [1, 2], "why": "the low blushing cheeks go with the eyes, not with the mouth"},
    },
}
DROPPED: dict[str, dict[str, str]] = {  # style -> codepoints -> why the face is left out of fusions
    style: {"1f973": "(not core) tilted disc, and the party horn is its mouth"}
    for style in ("noto", "twemoji")
}


def fixes_table(style: str = "noto"):
    """The faces of a style fixed by an override or left out, with the reason, as a DataFrame."""
    import pandas as pd

    from emojidiff.data.emoji_sources import faces_table

    by_u = {f.unified: f for f in faces_table()}
    rows = [(u, by_u[u].char, by_u[u].name, "override", o["why"]) for u, o in OVERRIDES.get(style, {}).items()]
    rows += [(u, by_u[u].char, by_u[u].name, "dropped", why) for u, why in DROPPED.get(style, {}).items()]
    return pd.DataFrame(rows, columns=["unified", "char", "name", "action", "why"])


class FusionError(EmojiSourceError):
    """A face whose SVG cannot be split into a disc, upper and lower features."""


@dataclass
class Piece:
    """One drawable unit of a face: an element (or subpaths of one path) with its ancestor groups."""

    order: int
    wrappers: list[dict]
    element: ET.Element
    subpaths: list[str] | None = None  # for split paths: the subpaths kept together (holes with their outline)
    kind: str = ""  # "base", "upper" or "lower"
    mask: np.ndarray | None = None

    def markup(self) -> str:
        """The piece as SVG markup, wrapped in copies of its ancestor groups."""
        el = copy.deepcopy(self.element)
        el.tail = None
        if self.subpaths is not None:
            el.set("d", "".join(self.subpaths))
        for attrs in reversed(self.wrappers):
            g = ET.Element("g", attrs)
            g.append(el)
            el = g
        return ET.tostring(el, encoding="unicode")


@dataclass
class FaceParts:
    """A face split for fusion: its defs, its pieces classified base/upper/lower, and masks for collisions."""

    style: str
    face: Face
    width: float
    height: float
    defs: str
    pieces: list[Piece]
    disc_box: tuple[float, float, float, float]  # x0, y0, x1, y1 in canvas units
    split_y: float  # boundary between upper and lower, share of disc height from its top
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # "disc", "upper", "lower" at ANALYSIS_PX

    def body(self, kinds=("base", "upper", "lower"), prefix: str = "a") -> str:
        """SVG body with only the pieces of the given kinds (ids prefixed)."""
        inner = "".join(p.markup() for p in self.pieces if p.kind in kinds)
        return prefix_ids(f"<defs>{self.defs}</defs>{inner}", prefix)

    def svg(self, kinds=("base", "upper", "lower")) -> str:
        return wrap_svg(self.body(kinds), self.width, self.height)


def _flatten(elem, wrappers, pieces, defs):
    for child in elem:
        tag = child.tag
        if tag in DEF_TAGS:
            defs.extend(list(child) if tag == "defs" else [child])
        elif tag == "g" and not (set(child.attrib) & ATOMIC_GROUP):
            _flatten(child, wrappers + [dict(child.attrib)], pieces, defs)
        elif tag in DRAWABLE:
            try:
                subs = split_subpaths(child.get("d", "")) if tag == "path" else None
            except SvgPathError as e:
                raise FusionError(str(e)) from e
            if subs is not None and len(subs) > 1:
                pieces.extend(Piece(len(pieces) + i, wrappers, child, [s]) for i, s in enumerate(subs))
            else:
                pieces.append(Piece(len(pieces), wrappers, child))


def _render_mask(defs: str, markup: str, w: float, h: float, name: str) -> np.ndarray:
    rgba = render_svg(wrap_svg(f"<defs>{defs}</defs>{markup}", w, h), ANALYSIS_PX, background=None, name=name)
    return rgba[..., 3] > 40


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _inside(inner, outer) -> float:
    """Share of `inner`'s pixels that lie inside `outer`."""
    n = inner.sum()
    return float((inner & outer).sum() / n) if n else 0.0


def analyse_face(style: str, face: Face) -> FaceParts:
    """Split a face into pieces and classify them: base (disc and large shading), upper, lower."""
    name = f"{style}/{face.name}"
    if face.unified in DROPPED.get(style, {}):
        raise FusionError(f"{name}: left out of fusions ({DROPPED[style][face.unified]})")
    data = style_data(style)
    w, h = float(data["width"]), float(data["height"])
    try:
        root = ET.fromstring(f"<svg>{face_body(style, face)}</svg>")
    except ET.ParseError as e:
        raise FusionError(f"{name}: malformed SVG: {e}") from e
    raw, def_elems = [], []
    _flatten(root, [], raw, def_elems)
    defs = "".join(ET.tostring(copy.deepcopy(d), encoding="unicode") for d in def_elems)
    defs = re.sub(r">\s+<", "><", defs)
    for p in raw:
        p.mask = _render_mask(defs, p.markup(), w, h, name)
    raw = [p for p in raw if p.mask.any()]
    # keep holes with their outline: subpaths of one path where one lies inside the other stay together
    pieces: list[Piece] = []
    for p in raw:
        host = next((q for q in reversed(pieces) if q.subpaths is not None and p.subpaths is not None
                     and q.element is p.element
                     and max(_inside(p.mask, q.mask), _inside(q.mask, p.mask)) > 0.9), None)
        if host is not None:
            host.subpaths = host.subpaths + p.subpaths
            host.mask = host.mask | p.mask
        else:
            pieces.append(p)
    for i, p in enumerate(pieces):
        p.order = i
        if p.subpaths is not None and len(p.subpaths) > 1:  # render the merged piece: holes are holes
            p.mask = _render_mask(defs, p.markup(), w, h, name)
    # the disc: the largest roughly square piece
    cands = []
    for p in pieces:
        x0, y0, x1, y1 = _bbox(p.mask)
        bw, bh = x1 - x0, y1 - y0
        if 0.8 < bw / bh < 1.25 and bw * bh > 0.3 * ANALYSIS_PX**2:
            cands.append((p.mask.sum(), p.order))
    if not cands:
        raise FusionError(f"{name}: no face disc found")
    disc = pieces[max(cands)[1]]
    dx0, dy0, dx1, dy1 = _bbox(disc.mask)
    disc_area = (dx1 - dx0) * (dy1 - dy0)
    # base: all up to the disc (halo and hat backs), the large pieces right after it (shading, tint), and thin
    # large crescents within it drawn later (shading)
    disc_fill = ndimage.binary_fill_holes(disc.mask)
    feats, run = [], True  # run: still in the unbroken sequence of base pieces from the start
    for p in pieces:
        x0, y0, x1, y1 = _bbox(p.mask)
        large = (x1 - x0) * (y1 - y0) > 0.28 * disc_area
        fill, inside = p.mask.sum() / ((x1 - x0) * (y1 - y0)), _inside(p.mask, disc_fill)
        rim = (fill < 0.4 and inside > 0.97) or (fill < 0.15 and inside > 0.8)  # thin shading along the edge
        if p.order <= disc.order or (large and (run or rim)):
            p.kind = "base"
        else:
            feats.append(p)
            run = False
    # highlights and details go with the feature that contains them
    root_of = {p.order: p for p in feats}
    for j in feats:
        hosts = [i for i in feats
                 if i.order < j.order and i.mask.sum() > j.mask.sum() and _inside(j.mask, i.mask) > 0.85]
        if hosts:
            root_of[j.order] = root_of[min(hosts, key=lambda q: q.mask.sum()).order]
    groups: dict[int, list[Piece]] = {}
    for p in feats:
        r = root_of[p.order]
        while root_of[r.order] is not r:
            r = root_of[r.order]
        groups.setdefault(r.order, []).append(p)
    centre = {}
    for r, members in groups.items():
        ys = np.nonzero(np.logical_or.reduce([m.mask for m in members]))[0]
        centre[r] = (ys.mean() - dy0) / (dy1 - dy0)
    override = OVERRIDES.get(style, {}).get(face.unified, {})
    split = override.get("split", _split_level(sorted(centre.values())))
    for r, members in groups.items():
        for p in members:
            p.kind = "upper" if centre[r] < split else "lower"
    for kind in ("upper", "lower"):
        for order in override.get(kind, []):
            if not 0 <= order < len(pieces) or pieces[order] is disc:
                raise FusionError(f"{name}: override names piece {order}, not a feature of this face")
            pieces[order].kind = kind
    scale = w / ANALYSIS_PX
    masks = {"disc": disc_fill}
    for kind in ("upper", "lower"):
        ms = [p.mask for p in pieces if p.kind == kind]
        masks[kind] = np.logical_or.reduce(ms) if ms else np.zeros_like(disc.mask)
    return FaceParts(style, face, w, h, defs, pieces,
                     (dx0 * scale, dy0 * scale, dx1 * scale, dy1 * scale), float(split), masks)


def _split_level(centres: list[float], lo: float = 0.45, hi: float = 0.8, default: float = 0.62) -> float:
    """Boundary at the largest gap between consecutive feature centres whose middle lies in [lo, hi]."""
    best, level = 0.05, default  # a gap must be real: features on one line (two eyes) are not split
    for a, b in zip(centres, centres[1:]):
        mid = (a + b) / 2
        if lo <= mid <= hi and b - a > best:
            best, level = b - a, mid
    return level


def _affine_mask(mask, k, ex, ey):
    """Mask under x' = k x + ex, y' = k y + ey (pixel units), nearest neighbour."""
    return ndimage.affine_transform(mask, [1 / k, 1 / k], offset=[-ey / k, -ex / k], order=0,
                                    output_shape=mask.shape, mode="constant", cval=False)


def place_lower(a: FaceParts, b: FaceParts) -> tuple[float, float, float]:
    """Where B's lower features go on A: (scale, dx, dy) in A's canvas units, after collision handling."""
    ax0, ay0, ax1, ay1 = a.disc_box
    bx0, by0, bx1, by1 = b.disc_box
    s = ((ax1 - ax0) / (bx1 - bx0) + (ay1 - ay0) / (by1 - by0)) / 2  # B's disc onto A's disc
    tx, ty = (ax0 + ax1) / 2 - s * (bx0 + bx1) / 2, (ay0 + ay1) / 2 - s * (by0 + by1) / 2
    if a is b or not b.masks["lower"].any():
        return s, tx, ty
    px = ANALYSIS_PX / a.width
    upper = ndimage.binary_dilation(a.masks["upper"], iterations=2)
    inside0 = _inside(b.masks["lower"], b.masks["disc"])
    ys, xs = np.nonzero(b.masks["lower"])
    pivx, pivy = xs.mean() / px * s + tx, ys.min() / px * s + ty  # shrink about the top centre of the mouth
    disc_h = ay1 - ay0
    best = None
    for k in (1.0, 0.92, 0.85, 0.78):
        for step in range(0, 7):
            dy = step * 0.015 * disc_h
            ks = k * s
            ex, ey = k * (tx - pivx) + pivx, k * (ty - pivy) + pivy + dy
            low = _affine_mask(b.masks["lower"], ks, ex * px, ey * px)
            if not low.any() or _inside(low, a.masks["disc"]) < min(0.97, inside0 - 0.01):
                break
            hit = int((low & upper).sum())
            cost = (hit, step + 10 * (1 - k))
            if best is None or cost < best[0]:
                best = (cost, (ks, ex, ey))
            if hit <= max(2, 0.005 * low.sum()):
                return ks, ex, ey
    return best[1] if best else (s, tx, ty)


def fuse(a: FaceParts, b: FaceParts) -> str:
    """A+B as an SVG document: A's base and upper pieces in A's order, B's lower pieces in place of A's."""
    if a.style != b.style:
        raise FusionError(f"cannot fuse across styles: {a.style} and {b.style}")
    k, ex, ey = place_lower(a, b)
    lower = "".join(p.markup() for p in b.pieces if p.kind == "lower")
    moved = prefix_ids(f'<g transform="matrix({k:.5f} 0 0 {k:.5f} {ex:.4f} {ey:.4f})">{lower}</g>', "b")
    out, placed = [], False
    for p in a.pieces:
        if p.kind == "lower":
            if not placed:
                out.append(moved)
                placed = True
            continue
        out.append(prefix_ids(p.markup(), "a"))
    if not placed:
        out.append(moved)
    defs = prefix_ids(a.defs, "a") + prefix_ids(b.defs, "b")
    return wrap_svg(f"<defs>{defs}</defs>{''.join(out)}", a.width, a.height)


def explain_fusion(style: str, face_a: Face, face_b: Face, size: int = 128) -> list[tuple[str, np.ndarray]]:
    """The steps of one fusion as titled images: each parent, its upper and lower pieces, and A+B."""
    a, b = analyse_face(style, face_a), analyse_face(style, face_b)
    r = lambda svg: render_svg(svg, size)  # noqa: E731
    return [
        (f"A: {face_a.name}", r(a.svg())),
        ("A: base + upper (kept)", r(a.svg(("base", "upper")))),
        ("A: lower (dropped)", r(a.svg(("lower",)))),
        (f"B: {face_b.name}", r(b.svg())),
        ("B: base + upper (unused)", r(b.svg(("base", "upper")))),
        ("B: lower (moved onto A)", r(b.svg(("lower",)))),
        ("A+B", r(fuse(a, b))),
    ]
