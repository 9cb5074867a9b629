"""Tests for SVG path splitting and id prefixing."""

import re

import pytest

from emojidiff.data import svgpath as sp


def test_prefix_ids_rewrites_ids_and_all_references():
    body = ('<defs><linearGradient id="g1"/><clipPath id="c"><use href="#p"/></clipPath></defs>'
            '<path id="p" fill="url(#g1)" clip-path="url( #c )" xlink:href="#g1"/>')
    out = sp.prefix_ids(body, "b")
    assert re.findall(r'id="([^"]+)"', out) == ["bg1", "bc", "bp"]
    assert "url(#bg1)" in out and "url(#bc)" in out and 'href="#bp"' in out and 'xlink:href="#bg1"' in out


def test_split_subpaths_makes_each_start_absolute():
    # a relative moveto after a close starts from the closed subpath's start (SVG 1.1, 8.3.3)
    subs = sp.split_subpaths("M10 10h10v10h-10z m20 0 5 5 l1 1 M50 50 a2 2 0 011 1z")
    assert subs[0] == "M10 10h10v10h-10z"
    assert subs[1] == "M30 10l5 5l1 1"  # the pair after the moveto is an implicit lineto
    assert subs[2] == "M50 50a2 2 0 0 1 1 1z"  # compact arc flags are parsed
    with pytest.raises(sp.SvgPathError, match="moveto"):
        sp.split_subpaths("L1 1")


def test_bad_path_data_is_a_clear_error():
    with pytest.raises(sp.SvgPathError, match="bad path number"):
        sp.split_subpaths("M1 1 L2")
    with pytest.raises(sp.SvgPathError, match="command"):
        sp.split_subpaths("M1 1 X2 2")
