"""Your own shapes: meshes and .binvox files voxelised for training (`threedgan.mesh_data`), on shapes the tests make.

Primitives (box, sphere, torus with its hole), open meshes, a grid meshed by the project's own export and voxelised
back, every file format, folder layouts, the cache, bad files with and without --skip-bad, the scripts.
"""
import importlib.util
import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import trimesh
from PIL import Image
from trimesh.exchange import binvox

from threedgan import mesh_data
from threedgan.config import Config
from threedgan.data import load_dataset
from threedgan.errors import ConfigError, DataError
from threedgan.mesh import export_mesh, volume_to_mesh
from threedgan.mesh_data import VoxeliseOptions, voxelise_file, voxelise_mesh

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def voxelise(mesh, **options):
    return voxelise_mesh(mesh.vertices, mesh.faces, VoxeliseOptions(**options))


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / (a | b).sum()


def chair_grid():
    """A 30³ chair placed as 3DShapeNets places shapes: centred, its longest side (the height) 24 voxels."""
    grid = np.zeros((30, 30, 30), dtype=bool)
    grid[7:23, 7:23, 13:15] = True  # seat
    grid[19:23, 7:23, 15:27] = True  # back, at high x like a canonical 3DShapeNets chair
    for x in (7, 20):
        for y in (7, 20):
            grid[x : x + 2, y : y + 2, 3:13] = True  # legs, two voxels thick
    grid[7:9, 7:23, 10:11] = True  # a rail one voxel thick
    return grid


def write_binvox(grid, path):
    voxels = trimesh.voxel.VoxelGrid(trimesh.voxel.encoding.DenseEncoding(np.asarray(grid, bool)))
    Path(path).write_bytes(binvox.export_binvox(voxels))
    return path


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------------ primitives


def test_box_fills_exactly_its_voxels_with_each_aspect_and_margin():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    grid, fill = voxelise(box)
    assert fill == "solid"
    # Longest side 24 voxels (margin 3 of 30), proportions kept, centred.
    assert grid.sum() == 24 * 12 * 6
    assert grid[3:27, 9:21, 12:18].all()
    stretched, _ = voxelise(box, aspect="stretch")
    assert stretched.sum() == 24**3
    # Margin 1: 28 voxels long, 16.8 wide (voxel centres 7.5 … 22.5 inside), 8.4 high (11.5 … 18.5).
    wide, _ = voxelise(trimesh.creation.box(extents=(2.0, 1.2, 0.6)), margin=1.0)
    assert wide.sum() == 28 * 16 * 8 and wide[1:29, 7:23, 11:19].all()


def test_sphere_is_solid_with_the_right_volume():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    grid, fill = voxelise(sphere)
    assert fill == "solid"
    expected = sphere.volume * 12**3  # radius 1 becomes 12 voxels
    assert abs(grid.sum() - expected) / expected < 0.03
    assert grid[15, 15, 15] and grid[4:26, 15, 15].all()
    assert np.array_equal(grid, grid[::-1]) and np.array_equal(grid, grid.transpose(1, 0, 2))  # symmetric


def test_torus_keeps_its_hole_and_fills_its_tube():
    torus = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3, major_sections=48, minor_sections=24)
    grid, fill = voxelise(torus)
    assert fill == "solid"
    assert not grid[12:18, 12:18, :].any()  # the hole stays open, top to bottom
    scale = 24 / 2.6
    ring = int(15 + 1.0 * scale)
    assert grid[ring, 14:16, 14:16].all() and grid[30 - ring - 1, 14:16, 14:16].all()  # the tube is solid inside
    expected = torus.volume * scale**3
    assert abs(grid.sum() - expected) / expected < 0.08


def test_up_axis_y_turns_the_shape_upright():
    tall_in_y = trimesh.creation.box(extents=(0.5, 2.0, 0.5))
    as_stored, _ = voxelise(tall_in_y)
    upright, _ = voxelise(tall_in_y, up_axis="y")
    assert np.ptp(np.argwhere(as_stored), axis=0).tolist() == [5, 23, 5]
    assert np.ptp(np.argwhere(upright), axis=0).tolist() == [5, 5, 23]


# -------------------------------------------------------------------------------------------- open / non-watertight


def test_an_open_box_keeps_its_surface_and_stays_empty_inside():
    box = trimesh.creation.box()
    open_box = trimesh.Trimesh(box.vertices, box.faces[~np.isclose(box.triangles_center[:, 2], 0.5)])
    assert not open_box.is_watertight
    grid, fill = voxelise(open_box)
    assert fill == "surface"
    assert not grid[5:25, 5:25, 5:].any()  # the opening lets the inside out: not filled
    assert grid[:, :, 3].sum() >= 24 * 24  # the bottom and the walls are there
    assert grid[3, 3:27, 3:27].all()


def test_small_cracks_are_closed_and_big_openings_are_not():
    sphere = trimesh.creation.icosphere(subdivisions=5)
    closed, _ = voxelise(sphere)
    centres = sphere.triangles_center
    for cap, expected_fills, filled in ((0.999, ("solid", "sealed"), True), (0.9, ("surface",), False)):
        holed = trimesh.Trimesh(sphere.vertices, sphere.faces[centres[:, 2] <= cap])  # a hole at the top
        assert not holed.is_watertight
        grid, fill = voxelise(holed)
        assert fill in expected_fills
        assert grid[15, 15, 15] == filled
        if filled:  # a hole about a voxel wide (the cap's radius is 0.54 voxels) changes nothing
            assert iou(grid, closed) > 0.99


def test_two_halves_with_a_crack_between_are_sealed():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    top = sphere.triangles_center[:, 2] > 0
    gap = 0.08  # about 0.9 voxel once scaled
    vertices = np.concatenate([sphere.vertices + [0, 0, gap / 2], sphere.vertices - [0, 0, gap / 2]])
    faces = np.concatenate([sphere.faces[top], sphere.faces[~top] + len(sphere.vertices)])
    grid, fill = voxelise_mesh(vertices, faces)
    assert fill == "sealed"
    assert grid[15, 15, 15] and grid[15, 15, 8] and grid[15, 15, 21]


def test_a_sheet_thinner_than_a_voxel_is_kept():
    sheet = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0.3], [0, 1, 0.3]], [[0, 1, 2], [0, 2, 3]])
    grid, fill = voxelise(sheet)
    assert fill == "surface"
    columns = grid.any(axis=2)
    assert columns[3:27, 3:27].all()  # one voxel (or two where it crosses a boundary) for every column it spans
    assert grid.sum(axis=2)[3:27, 3:27].max() <= 2


# --------------------------------------------------------------------------------- grids, round trips and formats


@pytest.mark.parametrize("suffix", [".obj", ".off", ".stl", ".ply", ".glb"])
def test_a_grid_exported_by_the_project_comes_back(tmp_path, suffix):
    grid = chair_grid()
    mesh = volume_to_mesh(grid)
    path = tmp_path / f"chair{suffix}"
    if suffix in (".obj", ".stl", ".ply"):
        export_mesh(mesh, path)  # the project's own export
    else:
        mesh.export(str(path))
    padded, info = voxelise_file(str(path))
    assert padded.shape == (32, 32, 32) and not padded[[0, -1]].any()
    assert iou(padded[1:-1, 1:-1, 1:-1], grid) >= 0.9
    assert iou(padded[1:-1, 1:-1, 1:-1], grid) == 1.0  # in fact voxel for voxel
    assert info["fill"] == "solid" and info["faces"] == len(mesh.faces)


@pytest.mark.parametrize("upsampling", [1, 4])
def test_binvox_files_come_back(tmp_path, upsampling):
    grid = chair_grid()
    fine = grid.repeat(upsampling, 0).repeat(upsampling, 1).repeat(upsampling, 2)
    padded, info = voxelise_file(write_binvox(fine, str(tmp_path / "chair.binvox")))
    assert iou(padded[1:-1, 1:-1, 1:-1], grid) == 1.0


def test_real_3dshapenets_grids_come_back(shared_zip):
    with zipfile.ZipFile(shared_zip) as archive:
        names = sorted(n for n in archive.namelist() if "/chair/30/test/" in n and n.endswith("_1.mat"))[:5]
        grids = [scipy.io.loadmat(io.BytesIO(archive.read(name)))["instance"].astype(bool) for name in names]
    for name, grid in zip(names, grids):
        mesh = volume_to_mesh(grid)
        back, _ = voxelise_mesh(mesh.vertices, mesh.faces)
        assert iou(back, grid) >= 0.9, name


# ------------------------------------------------------------------------------------------- folders and the cache


def make_folder(root, layout):
    """Writes small meshes: `layout` maps relative paths to trimesh meshes."""
    for relative, mesh in layout.items():
        path = Path(root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(str(path))
    return str(root)


def small_shapes():
    return {
        "box": trimesh.creation.box(extents=(1.0, 0.6, 0.4)),
        "sphere": trimesh.creation.icosphere(subdivisions=2),
        "cylinder": trimesh.creation.cylinder(radius=0.3, height=1.0, sections=16),
    }


def test_folder_layouts(tmp_path):
    shapes = small_shapes()
    modelnet = make_folder(tmp_path / "modelnet", {
        "cup/train/a.off": shapes["box"], "cup/train/b.stl": shapes["sphere"], "cup/test/c.ply": shapes["cylinder"],
        "vase/train/models/d.obj": shapes["sphere"], "vase/test/e.glb": shapes["box"],
    })
    members = mesh_data.list_shapes(modelnet)
    assert members[("cup", "train")] == [os.path.join("cup", "train", "a.off"), os.path.join("cup", "train", "b.stl")]
    assert members[("vase", "train")] == [os.path.join("vase", "train", "models", "d.obj")]
    test = load_dataset(modelnet, ["all"], split="test", cache_dir=str(tmp_path / "cache"))
    assert test.category_names == ["cup", "vase"] and test.labels.tolist() == [0, 1]
    assert test.names.tolist() == ["c.ply", "e.glb"]
    assert test.volumes64().shape == (2, 64, 64, 64, 1)

    flat = make_folder(tmp_path / "my_vases", {"one.off": shapes["box"], "two.off": shapes["sphere"]})
    dataset = load_dataset(flat, ["my_vases"], cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 2 and dataset.category_names == ["my_vases"]
    with pytest.raises(DataError, match=r"unknown category 'chair' in .*my_vases; available: my_vases"):
        load_dataset(flat, ["chair"], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no test split for category 'my_vases'.*my_vases/train/ and my_vases/test/"):
        load_dataset(flat, ["my_vases"], split="test", cache_dir=str(tmp_path / "cache"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="nor mesh or .binvox files"):
        load_dataset(str(tmp_path / "nothing"), ["all"])


def test_same_storage_as_mat_volumes_and_a_cache_hit_on_the_second_load(tmp_path, monkeypatch):
    shapes = small_shapes()
    folder = make_folder(tmp_path / "shapes", {f"thing/{name}.off": mesh for name, mesh in shapes.items()})
    cache = str(tmp_path / "cache")
    first = mesh_data.load_shape_dataset(folder, ["thing"], cache_dir=cache, workers=1)
    assert first.packed.dtype == np.uint8 and first.packed.shape == (3, 4096)  # bit-packed padded 32³, as .mat
    assert sorted(os.listdir(cache)) == sorted(f for f in os.listdir(cache) if f.endswith((".npz", ".csv")))
    report = next(f for f in os.listdir(cache) if f.endswith(".csv"))
    assert "seconds" in (Path(cache) / report).read_text().splitlines()[0]

    def no_voxelising(task):
        raise AssertionError("voxelised again instead of reading the cache")

    monkeypatch.setattr(mesh_data, "_voxelise_one", no_voxelising)
    second = mesh_data.load_shape_dataset(folder, ["thing"], cache_dir=cache, workers=1)
    assert np.array_equal(first.packed, second.packed) and first.names.tolist() == second.names.tolist()

    # The key is each file's path, size and time stamp, and the options: either changing misses the cache.
    os.utime(os.path.join(folder, "thing", "box.off"), ns=(1, 1))
    with pytest.raises(AssertionError, match="voxelised again"):
        mesh_data.load_shape_dataset(folder, ["thing"], cache_dir=cache, workers=1)
    with pytest.raises(AssertionError, match="voxelised again"):
        mesh_data.load_shape_dataset(folder, ["thing"], cache_dir=cache, workers=1, options=VoxeliseOptions(margin=2))


def test_parallel_voxelising_matches_serial_and_shows_progress(tmp_path, capfd):
    shapes = small_shapes()
    layout = {f"thing/{name}_{i}.off": mesh for name, mesh in shapes.items() for i in (1, 2)}
    folder = make_folder(tmp_path / "shapes", layout)
    serial = mesh_data.load_shape_dataset(folder, use_cache=False, workers=1, progress=False)
    parallel = mesh_data.load_shape_dataset(folder, cache_dir=str(tmp_path / "cache"), workers=2)
    assert np.array_equal(serial.packed, parallel.packed)
    assert "voxelising 6 shapes on 2 cores: 6/6" in capfd.readouterr().err


# ----------------------------------------------------------------------------------------------------- bad meshes


def write_text(text):
    return lambda path: Path(path).write_text(text)


BAD_FILES = [
    ("garbage.off", write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n"), "cannot read mesh"),
    ("empty.ply", write_text(""), "empty file"),
    ("text.stl", write_text("not an stl at all"), "no triangles (an empty mesh or a point cloud)"),
    ("points.obj", write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n"), "no triangles (an empty mesh or a point cloud)"),
    ("point.obj", write_text("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n"), "degenerate mesh (all vertices in one point)"),
    ("line.obj", write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n"), "degenerate mesh (every triangle has zero area)"),
    ("nan.obj", write_text("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"), "non-finite vertex coordinates"),
    ("broken.binvox", write_text("#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n\x01\x03"), "cannot read .binvox file"),
]


@pytest.mark.parametrize("name, write, expected", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_give_one_line_naming_the_file(tmp_path, name, write, expected):
    path = str(tmp_path / name)
    write(path)
    with pytest.raises(DataError) as raised:
        voxelise_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_gigantic_meshes_are_refused(tmp_path, monkeypatch):
    path = str(tmp_path / "big.stl")
    trimesh.creation.icosphere(subdivisions=2).export(path)
    monkeypatch.setattr(mesh_data, "MAX_FACES", 100)
    with pytest.raises(DataError, match=r"big.stl: 320 triangles, more than the 100 allowed"):
        voxelise_file(path)
    monkeypatch.setattr(mesh_data, "MAX_FILE_BYTES", 1000)
    with pytest.raises(DataError, match=r"big.stl: file too large"):
        voxelise_file(path)
    huge = tmp_path / "huge.binvox"
    huge.write_bytes(b"#binvox 1\ndim 2000 2000 2000\ntranslate 0 0 0\nscale 1\ndata\n\x00\xff")
    with pytest.raises(DataError, match=r"huge.binvox: .binvox grid \(2000, 2000, 2000\) is too large"):
        voxelise_file(str(huge))


def test_a_bad_file_stops_loading_and_writes_nothing_unless_skipped(tmp_path, caplog):
    shapes = small_shapes()
    folder = make_folder(tmp_path / "shapes", {f"thing/{name}.off": mesh for name, mesh in shapes.items()})
    bad = os.path.join(folder, "thing", "bad.obj")
    Path(bad).write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"^{bad}: no triangles .*pass --skip-bad"):
        load_dataset(folder, ["thing"], cache_dir=str(cache))
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written

    with caplog.at_level(logging.WARNING, logger="threedgan.mesh_data"):
        dataset = load_dataset(folder, ["thing"], cache_dir=str(cache), skip_bad=True)
    assert len(dataset) == 3 and "bad.obj" not in dataset.names.tolist()
    assert "skipped 1 of 4 shape files" in caplog.text and "bad.obj" in caplog.text
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp*"))

    # The cache remembers the skipped file: without --skip-bad it is still an error, with it a warning.
    with pytest.raises(DataError, match="bad.obj: no triangles"):
        load_dataset(folder, ["thing"], cache_dir=str(cache))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="threedgan.mesh_data"):
        again = load_dataset(folder, ["thing"], cache_dir=str(cache), skip_bad=True)
    assert np.array_equal(again.packed, dataset.packed) and "skipped 1 of 4" in caplog.text

    for name in ("box", "sphere", "cylinder"):
        os.remove(os.path.join(folder, "thing", f"{name}.off"))
    with pytest.raises(DataError, match="none of the 1 shape files could be voxelised"):
        load_dataset(folder, ["thing"], cache_dir=str(cache), skip_bad=True)


# ------------------------------------------------------------------------------------- options, scripts, packing


def test_options_are_checked():
    with pytest.raises(ConfigError, match="mesh_margin"):
        Config(mesh_margin=15)
    with pytest.raises(ConfigError, match="mesh_aspect"):
        Config(mesh_aspect="squash")
    with pytest.raises(DataError, match="mesh up axis"):
        VoxeliseOptions(up_axis="x")


def test_train_flags_reach_the_config():
    from threedgan.cli import config_from_train_arguments, train_parser

    arguments = train_parser().parse_args(
        ["--data-dir", "shapes/", "--mesh-margin", "2", "--mesh-aspect", "stretch", "--mesh-up-axis", "y", "--skip-bad"]
    )
    config = config_from_train_arguments(arguments)
    assert (config.mesh_margin, config.mesh_aspect, config.mesh_up_axis, config.skip_bad) == (2.0, "stretch", "y", True)
    assert config_from_train_arguments(train_parser().parse_args([])).skip_bad is False


def test_export_then_voxelise_scripts_reach_the_same_shapes(tmp_path, volumetric_dir, capsys):
    meshes = tmp_path / "meshes"
    exporter = load_script("export_meshes")
    assert exporter.main(["--data-dir", volumetric_dir, "--category", "chair", "--split", "train", "test",
                          "--rotations", "canonical", "--output-dir", str(meshes), "--cache-dir", str(tmp_path / "c")]) == 0
    assert sorted(os.listdir(meshes / "chair" / "train")) == ["chair_0000_1.off", "chair_0001_1.off", "chair_0002_1.off"]
    packed = str(tmp_path / "chair.npz")
    voxelizer = load_script("voxelize")
    assert voxelizer.main([str(meshes), "--split", "train", "test", "--output", packed, "--workers", "1",
                           "--cache-dir", str(tmp_path / "c")]) == 0
    assert "train 3, test 3 shapes" in capsys.readouterr().out
    from_meshes = load_dataset(packed, ["chair"], split="test", rotations="canonical")  # names end in _1.off
    from_mats = load_dataset(volumetric_dir, ["chair"], split="test", rotations="canonical", cache_dir=str(tmp_path / "c"))
    assert [n.rsplit(".", 1)[0] for n in from_meshes.names] == [n.rsplit(".", 1)[0] for n in from_mats.names]
    # The test data's boxes sit anywhere in the grid; the mesh path centres and scales them, as it does any mesh.
    assert (from_meshes.volumes32().sum(axis=(1, 2, 3)) > 0).all()


def test_voxelize_script_error_is_one_line(tmp_path, capsys):
    folder = tmp_path / "shapes" / "thing"
    folder.mkdir(parents=True)
    (folder / "bad.off").write_text("OFF\n3 1 0\n0 0 0\n")
    voxelizer = load_script("voxelize")
    assert voxelizer.main([str(tmp_path / "shapes"), "--output", str(tmp_path / "out.npz"), "--workers", "1",
                           "--cache-dir", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {folder / 'bad.off'}: cannot read mesh")
    assert not (tmp_path / "out.npz").exists()


def test_visualize_shows_a_mesh_beside_its_voxelisation(tmp_path, capsys):
    path = tmp_path / "chair.obj"
    export_mesh(volume_to_mesh(chair_grid()), path)
    visualize = load_script("visualize")
    arguments = [str(path), "--output-dir", str(tmp_path / "out"), "--image-size", "64", "--format", "png,stl"]
    assert visualize.main(arguments) == 0
    out = capsys.readouterr().out
    assert "fill solid" in out and "chair.png" in out
    with Image.open(tmp_path / "out" / "chair.png") as image:
        assert image.size[0] == 128 and image.size[1] > 64  # mesh | voxels, with captions
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels[:64, :64] != 255).any() and (pixels[:64, 64:] != 255).any()  # both halves drawn
    assert trimesh.load_mesh(str(tmp_path / "out" / "chair.stl")).is_watertight

    (tmp_path / "bad.stl").write_text("nonsense")
    assert visualize.main([str(tmp_path / "bad.stl"), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"error: {tmp_path / 'bad.stl'}: no triangles" in capsys.readouterr().err
