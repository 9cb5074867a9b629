"""SVG path data and ids: split compound paths into standalone subpaths; prefix ids so two drawings can merge."""

from __future__ import annotations

import re

from emojidiff.data.emoji_sources import EmojiSourceError

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NPARAM = dict(M=2, L=2, H=1, V=1, C=6, S=4, Q=4, T=2, A=7, Z=0)


class SvgPathError(EmojiSourceError):
    """Path data that cannot be parsed."""


def prefix_ids(markup: str, prefix: str) -> str:
    """Prefix every id and every reference to one, so that two faces' gradients cannot collide."""
    markup = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', markup)
    markup = re.sub(r"url\(\s*#([^)\s]+)\s*\)", lambda m: f"url(#{prefix}{m[1]})", markup)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m[1]}"', markup)


def _path_segments(d: str) -> list[tuple[str, list[str]]]:
    """Path data as (command, parameters) with implicit repeats made explicit (SVG 1.1, 8.3)."""
    segs, pos, cmd = [], 0, None
    n = len(d)

    def skip(p):
        while p < n and d[p] in " \t\r\n,":
            p += 1
        return p

    pos = skip(pos)
    while pos < n:
        if d[pos].isalpha():
            cmd = d[pos]
            pos = skip(pos + 1)
            if cmd.upper() not in _NPARAM:
                raise SvgPathError(f"bad path command {cmd!r} in {d[:60]!r}")
            if cmd in "Zz":
                segs.append((cmd, []))
                continue
        elif cmd is None or cmd in "Zz":
            raise SvgPathError(f"path data without a command at {pos} in {d[:60]!r}")
        params = []
        for i in range(_NPARAM[cmd.upper()]):
            if cmd in "Aa" and i in (3, 4) and pos < n and d[pos] in "01":  # arc flags may be unseparated
                params.append(d[pos])
                pos = skip(pos + 1)
                continue
            m = _NUMBER.match(d, pos)
            if not m:
                raise SvgPathError(f"bad path number at {pos} in {d[:60]!r}")
            params.append(m[0])
            pos = skip(m.end())
        segs.append((cmd, params))
        if cmd in "Mm":  # further pairs after a moveto are linetos
            cmd = "L" if cmd == "M" else "l"
    return segs


def _fmt(v: float) -> str:
    s = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def split_subpaths(d: str) -> list[str]:
    """Split path data at each moveto; every subpath starts with an absolute M so it stands alone."""
    x = y = sx = sy = 0.0
    subs: list[list[str]] = []
    for cmd, p in _path_segments(d):
        v = [float(t) for t in p]
        up, rel = cmd.upper(), cmd.islower()
        if up == "M":
            x, y = (x + v[0], y + v[1]) if rel else (v[0], v[1])
            sx, sy = x, y
            subs.append([f"M{_fmt(x)} {_fmt(y)}"])
            continue
        if not subs:
            raise SvgPathError(f"path data does not start with a moveto: {d[:60]!r}")
        subs[-1].append(cmd + " ".join(p))
        if up == "Z":
            x, y = sx, sy
        elif up == "H":
            x = x + v[0] if rel else v[0]
        elif up == "V":
            y = y + v[0] if rel else v[0]
        else:
            x, y = (x + v[-2], y + v[-1]) if rel else (v[-2], v[-1])
    return ["".join(s) for s in subs]
