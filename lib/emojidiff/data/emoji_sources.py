"""The shipped emoji art: which yellow faces exist, their SVGs per style, licences, and rendering with resvg."""

from __future__ import annotations

import functools
import io
import json
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

DATA = resources.files("emojidiff") / "data"


class EmojiSourceError(ValueError):
    """An unknown style or face, or a missing or malformed SVG."""


@dataclass(frozen=True)
class Face:
    """One source face: codepoints as in emoji-datasource ("unified"), glyph, name, and whether it is core."""

    unified: str
    char: str
    name: str
    core: bool
    props: str | None
    names: dict


@functools.cache
def faces_table() -> tuple[Face, ...]:
    """All usable faces from data/faces.json, in its order."""
    raw = json.loads((DATA / "faces.json").read_text())
    return tuple(Face(f["unified"], f["char"], f["cldr_slug"], f["core"], f.get("props"), f["names"])
                 for f in raw["faces"])


def excluded_faces() -> dict[str, str]:
    """Faces of the Unicode face subgroups that are not usable, with the reason (codepoints -> reason)."""
    return dict(json.loads((DATA / "faces.json").read_text())["excluded"])


def available_styles() -> list[str]:
    """Styles whose SVGs ship with the package."""
    return sorted(p.name[:-5] for p in DATA.iterdir() if p.name.endswith(".json") and p.name != "faces.json")


@functools.cache
def style_data(style: str) -> dict:
    """The shipped JSON of one style: canvas size, licence, author and the faces' SVG bodies."""
    if style not in available_styles():
        raise EmojiSourceError(f"unknown emoji style {style!r} (available: {', '.join(available_styles())})")
    return json.loads((DATA / f"{style}.json").read_text())


def select_faces(faces: str | list[str] = "core", style: str = "noto", max_faces: int = 0) -> list[Face]:
    """The faces to fuse: "core", "all", or a list of names, codepoints or glyphs; the first max_faces if > 0."""
    table = faces_table()
    if faces == "core":
        chosen = [f for f in table if f.core]
    elif faces == "all":
        chosen = list(table)
    elif isinstance(faces, (list, tuple)):
        by_key = {k: f for f in table for k in (f.unified, f.char, f.name)}
        unknown = [k for k in faces if k not in by_key]
        if unknown:
            raise EmojiSourceError(f"unknown face {unknown[0]!r} (use a cldr_slug, codepoints or glyph "
                                   "from faces.json)")
        chosen = [by_key[k] for k in faces]
    else:
        raise EmojiSourceError(f"faces must be 'core', 'all' or a list of faces, got {faces!r}")
    chosen = [f for f in chosen if f.names.get(style)]  # a set may lack a face
    if max_faces < 0:
        raise EmojiSourceError(f"max_faces must be >= 0, got {max_faces}")
    return chosen[:max_faces] if max_faces else chosen


def face_body(style: str, face: Face) -> str:
    """The SVG body (inner markup) of one face in one style."""
    data = style_data(style)
    name = face.names.get(style)
    if not name or name not in data["icons"]:
        raise EmojiSourceError(f"{style}: no SVG for face {face.name!r} ({face.unified}, icon {name!r})")
    return data["icons"][name]


def wrap_svg(body: str, width: float, height: float) -> str:
    """A standalone SVG document around an Iconify body."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="0 0 {width:g} {height:g}">{body}</svg>')


def face_svg(style: str, face: Face) -> str:
    """A face as a standalone SVG document."""
    data = style_data(style)
    return wrap_svg(face_body(style, face), data["width"], data["height"])


def render_svg(svg: str, size: int, background: str | None = "white", name: str = "svg") -> np.ndarray:
    """Rasterise an SVG at size x size: uint8 HxWx3 on `background`, or HxWx4 (RGBA) if background is None.

    Alpha is flattened by resvg itself: it fills the canvas with the background colour, then composites
    the drawing over it (premultiplied source-over), so edges blend into white with no dark fringes.
    """
    import resvg_py
    from PIL import Image

    if not re.search(r"<svg[\s>]", svg):
        raise EmojiSourceError(f"{name}: not an SVG document")
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background=background,
                                    skip_system_fonts=True)
    except (ValueError, RuntimeError) as e:
        raise EmojiSourceError(f"{name}: malformed SVG: {e}") from e
    img = Image.open(io.BytesIO(bytes(png)))
    return np.asarray(img.convert("RGB" if background is not None else "RGBA"))


def render_face(style: str, face: Face, size: int) -> np.ndarray:
    """One source face rendered on white, uint8 HxWx3."""
    return render_svg(face_svg(style, face), size, name=f"{style}/{face.name}")


def attribution(style: str) -> str:
    """One line crediting a style's authors and licence."""
    d = style_data(style)
    return (f"{d['name']} by {d['author']['name']} ({d['author']['url']}), {d['license']['spdx']}, "
            f"via {d['package']} {d['version']}")
