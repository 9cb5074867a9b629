"""Tests for SVG-level fusion: piece classification, holes, overrides, A+B composition, collisions, errors."""

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from emojidiff import emoji_sources as es
from emojidiff import fusion as fu

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


def test_collision_moves_or_shrinks_the_mouth():
    # 🤪's wide grin reaches up between its eyes: on a face with big heart eyes it must give way
    a, b = parts("😍"), parts("🤪")
    k, ex, ey = fu.place_lower(a, b)
    assert (k, ex, ey) != fu.place_lower(b, b)
    assert k < 1.0 or ey > 0.0


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
