"""Tests for the shipped emoji sources: faces list, SVG data, licences, rendering and errors."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from emojidiff.data import emoji_sources as es


def test_faces_counts_and_order():
    assert len(es.select_faces("core")) == 67
    assert len(es.select_faces("all")) == 92
    assert [f.char for f in es.select_faces("core", max_faces=3)] == ["😀", "😃", "😄"]
    assert all(f.core for f in es.select_faces("core"))
    assert "1f92f" in es.excluded_faces()  # exploding head: not usable


def test_select_by_name_codepoint_or_glyph():
    faces = es.select_faces(["grinning-face", "1f62e", "😠"])
    assert [f.unified for f in faces] == ["1f600", "1f62e", "1f620"]


def test_every_face_ships_for_noto_with_licence_and_attribution():
    data = es.style_data("noto")
    assert data["width"] == data["height"] == 128
    assert data["license"]["spdx"] == "Apache-2.0"
    for f in es.select_faces("all", "noto"):
        assert es.face_body("noto", f).strip().startswith("<")
    assert "Apache License" in (es.DATA / "LICENSE-noto.txt").read_text()
    attribution = (es.DATA / "ATTRIBUTION.md").read_text()
    for style in es.available_styles():
        assert f"`{style}.json`" in attribution
    assert "Apache-2.0" in es.attribution("noto")


def test_render_face_on_white():
    face = es.select_faces("core")[0]
    img = es.render_face("noto", face, 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[0, 0] == 255).all()  # corners are white background
    r, g, b = img[16, 8].astype(int)  # cheek: yellow
    assert r > 200 and g > 150 and b < 120
    rgba = es.render_svg(es.face_svg("noto", face), 32, background=None)
    assert rgba.shape == (32, 32, 4) and rgba[0, 0, 3] == 0


_RENDER_DIGEST = ("import hashlib; from emojidiff.data import emoji_sources as es; h = hashlib.sha256(); "
                  "[h.update(es.render_face(s, f, n).tobytes()) for s in es.available_styles() "
                  "for f in es.select_faces('core', s)[::9] for n in (32, 64)]; print(h.hexdigest())")


def test_render_is_deterministic_across_processes():
    # the dataset is cached by its parameters, so a render that differs between processes (threads, hash seeds)
    # would silently mix two datasets: compare the bytes of this process with two fresh ones
    here = subprocess.run([sys.executable, "-c", _RENDER_DIGEST], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": "1"}).stdout.split()[-1]
    there = subprocess.run([sys.executable, "-c", _RENDER_DIGEST], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "2", "OMP_NUM_THREADS": "2"}).stdout.split()[-1]
    h = hashlib.sha256()
    for s in es.available_styles():
        for f in es.select_faces("core", s)[::9]:
            for n in (32, 64):
                h.update(es.render_face(s, f, n).tobytes())
    assert here == there == h.hexdigest()


def test_unknown_style_and_face():
    with pytest.raises(es.EmojiSourceError, match="klingon"):
        es.style_data("klingon")
    with pytest.raises(es.EmojiSourceError, match="no-such-face"):
        es.select_faces(["grinning-face", "no-such-face"])
    with pytest.raises(es.EmojiSourceError, match="core"):
        es.select_faces("some")


def test_missing_and_malformed_svg(monkeypatch):
    face = es.select_faces("core")[0]
    ghost = es.Face("ffff", "?", "ghost-face", True, None, {"noto": "ghost-face"})
    with pytest.raises(es.EmojiSourceError, match="ghost-face"):
        es.face_body("noto", ghost)
    with pytest.raises(es.EmojiSourceError, match="bad.svg"):
        es.render_svg('<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0', 16, name="bad.svg")
    with pytest.raises(es.EmojiSourceError, match="not an SVG"):
        es.render_svg("hello", 16)
    data = dict(es.style_data("noto"), icons={})
    monkeypatch.setattr(es, "style_data", lambda style: data)
    with pytest.raises(es.EmojiSourceError, match=face.name):
        es.face_body("noto", face)
