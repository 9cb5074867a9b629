"""Tests for SVG-level fusion: piece classification, holes, overrides, A+B composition, collisions, errors."""

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from emojidiff.data import emoji_sources as es
from emojidiff.data import fusion as fu

FACES = {f.char: f for f in es.select_faces("all", "noto")}


def parts(char):
    return fu.analyse_face("noto", FACES[char])


@pytest.mark.parametrize("char", ["😀", "😠", "😪", "🥰", "🤪", "😳", "😭"])
def test_classification_puts_eyes_above_mouth(char):
    p = parts(char)
    kinds = {q.kind for q in p.pieces}
    assert kinds == {"base", "upper", "lower"}
    ys_up = np.nonzero(p.masks["upper"])[0]
    ys_low = np.nonzero(p.masks["lower"])[0]
    assert np.median(ys_up) < np.median(ys_low)
    disc = p.pieces[[q.kind for q in p.pieces].index("base")]
    assert disc.mask.sum() > 0.5 * p.masks["disc"].sum()


def test_holes_stay_with_their_outline():
    # the disguise glasses are rings: outer circle + hole in one path; split apart they would render as discs
    p = parts("🥸")
    dark = [q for q in p.pieces if q.element.get("fill") == "#212121"]
    lens = [q for q in p.pieces if q.element.get("fill") == "#4fc3f7"]
    assert all(q.mask.sum() < 0.7 * lens[0].mask.sum() for q in dark if q.mask.sum() > 500)


@pytest.mark.parametrize("size", [32, 64])
def test_self_fusion_reproduces_the_face(size):
    for face in es.select_faces("core", "noto"):
        p = fu.analyse_face("noto", face)
        orig = es.render_face("noto", face, size).astype(int)
        same = es.render_svg(fu.fuse(p, p), size).astype(int)
        diff = np.abs(orig - same)
        assert diff.mean() < 0.1, face.name  # only anti-aliasing seams where subpaths were split
        assert diff.max() < 40, face.name


def test_fusion_takes_upper_from_a_and_lower_from_b():
    a, b = parts("😀"), parts("😮")
    img = es.render_svg(fu.fuse(a, b), 64).astype(float)
    ia, ib = es.render_face("noto", a.face, 64).astype(float), es.render_face("noto", b.face, 64).astype(float)
    top, bottom = slice(14, 32), slice(38, 58)
    mse = lambda x, y, rows: ((x[rows] - y[rows]) ** 2).mean()  # noqa: E731
    assert mse(img, ia, top) < 0.2 * mse(img, ib, top) + 1
    assert mse(img, ib, bottom) < 0.2 * mse(img, ia, bottom)


def test_fused_svg_has_unique_ids_and_resolves_references():
    svg = fu.fuse(parts("😛"), parts("😝"))  # both use clip paths and gradients with their own ids
    ids = re.findall(r'\bid="([^"]+)"', svg)
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r"url\(#([^)]+)\)", svg)) | set(re.findall(r'href="#([^"]+)"', svg))
    assert refs <= set(ids)
    ET.fromstring(svg)  # well-formed


def _placed_lower(a, b, k, ex, ey):
    """B's lower pieces under x' = k x + (ex, ey) on A's canvas, rendered by resvg: a mask at ANALYSIS_PX."""
    lower = "".join(p.markup() for p in b.pieces if p.kind == "lower")
    svg = es.wrap_svg(f'<defs>{b.defs}</defs><g transform="matrix({k} 0 0 {k} {ex} {ey})">{lower}</g>',
                      a.width, a.height)
    return es.render_svg(svg, fu.ANALYSIS_PX, background=None)[..., 3] > 40


def _plain_disc_fit(a, b):
    """B's disc box scaled (mean of the two axis ratios) and centred onto A's: placement with no collision search."""
    ax0, ay0, ax1, ay1 = a.disc_box
    bx0, by0, bx1, by1 = b.disc_box
    s = ((ax1 - ax0) / (bx1 - bx0) + (ay1 - ay0) / (by1 - by0)) / 2
    return s, (ax0 + ax1) / 2 - s * (bx0 + bx1) / 2, (ay0 + ay1) / 2 - s * (by0 + by1) / 2


@pytest.mark.parametrize("a_char, b_char", [("😍", "🤪"), ("😎", "🤪"), ("😍", "😁")])
def test_collision_search_moves_the_mouth_off_the_eyes(a_char, b_char):
    # 🤪's wide grin reaches up between its eyes; 😁's teeth sit high: on big heart eyes or sunglasses the
    # plain disc fit draws the mouth over the eyes, and place_lower must push it down or shrink it.
    a, b = parts(a_char), parts(b_char)
    plain = _placed_lower(a, b, *_plain_disc_fit(a, b))
    k, ex, ey = fu.place_lower(a, b)
    placed = _placed_lower(a, b, k, ex, ey)
    hit_plain, hit_placed = (int((m & a.masks["upper"]).sum()) for m in (plain, placed))
    assert hit_plain >= 40  # the plain fit really collides (pixels at 128 px)
    assert hit_placed <= 0.3 * hit_plain
    assert placed.sum() >= 0.5 * plain.sum()  # still a mouth, not shrunk away
    own = (b.masks["lower"] & b.masks["disc"]).sum() / b.masks["lower"].sum()  # 🤪's tongue hangs off its disc
    assert (placed & a.masks["disc"]).sum() >= (min(0.97, own) - 0.03) * placed.sum()  # and on the face


def test_a_mouth_that_fits_keeps_the_plain_disc_fit():
    a, b = parts("😀"), parts("😮")
    assert fu.place_lower(a, b) == pytest.approx(_plain_disc_fit(a, b))


def test_overrides_and_dropped_faces():
    assert set(fu.OVERRIDES["noto"]) >= {"1f970", "1f92a"}
    p = parts("🥰")
    smile = p.pieces[3]
    assert smile.kind == "lower" and smile.element.get("fill") == "#422b0d"
    with pytest.raises(fu.FusionError, match="partying"):
        parts("🥳")


def test_malformed_svg_names_the_face(monkeypatch):
    monkeypatch.setattr(fu, "face_body", lambda style, face: "<path d='M0 0'><g>")
    with pytest.raises(fu.FusionError, match="grinning-face"):
        fu.analyse_face("noto", FACES["😀"])
    monkeypatch.setattr(fu, "face_body", lambda style, face: "<circle r='1'/>")
    with pytest.raises(fu.FusionError, match="no face disc"):
        fu.analyse_face("noto", FACES["😀"])


def test_cross_style_fusion_is_refused():
    twe = fu.analyse_face("twemoji", FACES["😀"])
    with pytest.raises(fu.FusionError, match="styles"):
        fu.fuse(parts("😀"), twe)


def test_twemoji_self_fusion_and_split():
    for face in es.select_faces("core", "twemoji")[::6]:
        p = fu.analyse_face("twemoji", face)
        diff = np.abs(es.render_face("twemoji", face, 32).astype(int) - es.render_svg(fu.fuse(p, p), 32).astype(int))
        assert diff.mean() < 0.1, face.name
        assert np.median(np.nonzero(p.masks["upper"])[0]) < np.median(np.nonzero(p.masks["lower"])[0]), face.name


def test_bad_override_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(fu.OVERRIDES, "noto", {"1f600": {"lower": [99], "why": "test"}})
    with pytest.raises(fu.FusionError, match="piece 99"):
        parts("😀")
    assert list(fu.fixes_table("noto")["action"]) == ["override", "dropped"]


@pytest.mark.parametrize("style", es.available_styles())
def test_every_shipped_face_analyses(style):
    for face in es.select_faces("all", style):
        if face.unified in fu.DROPPED.get(style, {}):
            with pytest.raises(fu.FusionError, match="left out"):
                fu.analyse_face(style, face)
            continue
        p = fu.analyse_face(style, face)  # overrides must name existing pieces
        kinds = {q.kind for q in p.pieces}
        if face.core:
            assert "upper" in kinds, face.name
        if face.core and face.unified != "1f636":  # 😶 has no mouth
            assert "lower" in kinds, face.name
