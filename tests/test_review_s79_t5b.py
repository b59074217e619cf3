"""Review s79 t5b: issue 15 target 5's calibration photographs. ``make_imagenet_data.py`` gained a fourth source,
``--calibration-source opencv`` (the colour photographs among Debian's ``opencv-doc`` sample data), read from the
downloaded package in place as GCompris' are; these tests build a tiny stand-in package (no Pillow needed)."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_sources" / "make_imagenet_data.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_imagenet_data_s79", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    """An ar archive holding debian-binary and an xz data.tar with ``files``, as dpkg-deb writes them."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    blob = b"!<arch>\n"
    for name, content in ((b"debian-binary", b"2.0\n"), (b"data.tar.xz", data.getvalue())):
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        blob += header + str(len(content)).encode().ljust(10) + b"`\n" + content + b"\n" * (len(content) % 2)
    path.write_bytes(blob)
    return path


def test_opencv_is_a_calibration_source_whose_photographs_are_read_from_the_package(script, tmp_path):
    assert "opencv" in script.CALIBRATION_SOURCES
    wanted = {f"{script.OCV_DIR}/{name}": name.encode() for name in script.OCV_PHOTOS}
    deb = _deb(tmp_path / "opencv-doc_4.6.0+dfsg-12_all.deb", {**wanted, f"{script.OCV_DIR}/sudoku.png": b"x"})
    files = script._deb_files(deb, set(wanted))
    assert files == wanted  # every listed photograph, byte for byte, and nothing else


def test_opencv_source_refuses_a_missing_package_or_photograph_by_name(script, tmp_path):
    with pytest.raises(SystemExit, match="apt-get download opencv-doc"):
        script._opencv_calibration(tmp_path, tmp_path, {})
    first, *rest = script.OCV_PHOTOS
    _deb(tmp_path / "opencv-doc_4.6.0+dfsg-12_all.deb", {f"{script.OCV_DIR}/{name}": b"x" for name in rest})
    with pytest.raises(SystemExit, match=f"lacks .*{first}.*package version"):
        script._opencv_calibration(tmp_path, tmp_path, {})
