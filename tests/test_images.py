"""Images: the [-1, 1] <-> uint8 conversions, grids, PNG bytes, the one figure saver; the default run folder."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emojidiff.config import config_from_dict
from emojidiff.images import from_uint8, make_grid, png_bytes, save_figure, to_uint8, to_unit_range
from emojidiff.layout import RunLayout


def test_every_grey_level_survives_the_round_trip_and_arrays_agree_with_tensors():
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16).repeat(3, 1)  # NCHW
    x = from_uint8(levels)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0 and x.shape == levels.shape
    np.testing.assert_array_equal(to_uint8(x), levels.transpose(0, 2, 3, 1))
    t = from_uint8(torch.from_numpy(levels))
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(x))
    assert from_uint8(levels, np.float64).dtype == np.float64
    assert from_uint8(torch.from_numpy(levels), torch.float64).dtype == torch.float64
    np.testing.assert_array_equal(from_uint8(levels, np.float64)[0, 0, 0, :3], [-1.0, -1 + 2 / 255, -1 + 4 / 255])


def test_to_unit_range_takes_uint8_nhwc_or_float_nchw():
    nhwc = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    x = to_unit_range(nhwc)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert torch.equal(x, from_uint8(torch.from_numpy(nhwc)).permute(0, 3, 1, 2))
    assert torch.equal(to_unit_range(x.double()), x)
    with pytest.raises(ValueError, match="4-D"):
        to_unit_range(nhwc[0])
    with pytest.raises(ValueError, match="NHWC"):
        to_unit_range(nhwc.transpose(0, 3, 1, 2).copy())


def test_grid_and_png_bytes():
    ims = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (10, 20, 30)])
    g = make_grid(ims, ncols=2, pad=1, scale=2)
    assert g.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    assert (g[1:5, 1:5] == 10).all() and (g[1:5, 6:10] == 20).all() and (g[6:10, 1:5] == 30).all()
    assert (g[6:10, 6:10] == 255).all()  # the empty cell keeps the background
    back = np.asarray(Image.open(io.BytesIO(png_bytes(ims[1], scale=3))))
    assert back.shape == (6, 6, 3) and (back == 20).all()


def test_save_figure_is_the_one_place_figures_are_written(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    path = save_figure(fig, RunLayout(tmp_path / "run"), "line.png", dpi=50)
    assert path == tmp_path / "run" / "figures" / "line.png"
    assert Image.open(path).size[0] <= 2 * 50  # tight bounding box at the given dpi
    assert save_figure(fig, tmp_path / "run", "again.png").parent == path.parent  # a folder works too
    with pytest.raises(ValueError, match="suffix"):
        save_figure(fig, tmp_path / "run", "line")
    plt.close(fig)


def test_the_default_run_folder_is_outputs_slash_profile_name(tmp_path):
    cfg = config_from_dict({"name": "demo"})
    assert RunLayout.for_config(cfg).root == Path("outputs") / "demo"
    assert RunLayout.for_config(cfg, tmp_path / "x").root == tmp_path / "x"
    assert RunLayout.for_config(cfg, base=tmp_path).root == tmp_path / "demo"


def test_only_save_figure_writes_figures_and_no_plot_function_takes_a_path(repo):
    import ast

    savers, takes_path = [], []
    for path in sorted((repo / "lib" / "emojidiff").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "savefig":
                savers.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.FunctionDef) and node.name.startswith("plot_"):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                takes_path += [f"{path.name}:{node.name}({n})" for n in names if "path" in n or n == "out"]
    assert savers == ["images.py:" + str(next(i for i, line in enumerate(
        (repo / "lib" / "emojidiff" / "images.py").read_text().splitlines(), 1) if ".savefig(" in line))]
    assert not takes_path, f"plot_* functions return a Figure and never save: {takes_path}"
