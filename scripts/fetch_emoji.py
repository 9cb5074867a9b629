"""Regenerate the shipped emoji SVG data (lib/emojidiff/data/<style>.json) from the Iconify npm packages.

Usage: python scripts/fetch_emoji.py [--styles noto twemoji] [--workdir /tmp/emoji-npm]
Needs `npm` (it runs `npm pack @iconify-json/<style>`); keeps only the faces listed in data/faces.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "lib" / "emojidiff" / "data"


def fetch(style: str, workdir: Path) -> Path:
    """Download one Iconify set with npm and write the chosen faces' bodies as data/<style>.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    package = f"@iconify-json/{style}"
    tgz = subprocess.run(["npm", "pack", package, "--silent"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    with tarfile.open(workdir / tgz) as tar:
        icons = json.load(tar.extractfile("package/icons.json"))
        info = json.load(tar.extractfile("package/info.json"))
        meta = json.load(tar.extractfile("package/package.json"))
    faces = json.loads((DATA / "faces.json").read_text())["faces"]
    names = sorted({f["names"][style] for f in faces if f["names"].get(style)})
    missing = [n for n in names if n not in icons["icons"]]
    if missing:
        raise SystemExit(f"{package}: icons not found: {missing}")
    out = {
        "style": style,
        "package": package,
        "version": meta["version"],
        "name": info["name"],
        "author": info["author"],
        "license": info["license"],
        "width": icons.get("width", 16),
        "height": icons.get("height", 16),
        "icons": {n: icons["icons"][n]["body"] for n in names},
    }
    path = DATA / f"{style}.json"
    path.write_text(json.dumps(out, indent=0, ensure_ascii=False) + "\n")
    print(f"{package} {meta['version']}: {len(names)} faces -> {path} ({path.stat().st_size // 1024} KiB)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=["noto", "twemoji"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/emoji-npm"))
    args = parser.parse_args()
    for style in args.styles:
        fetch(style, args.workdir)


if __name__ == "__main__":
    main()
