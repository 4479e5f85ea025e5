#!/usr/bin/env python3
"""Reference preprocessing and inference in Python, for infer_service/tests/reference.rs.

Run with the project venv (onnxruntime, numpy, pillow):

    .cache/venv/bin/python infer_service/tests/reference.py \
        --model MODEL.onnx --cifar cifar10_test_batch.bin --records 10 --out DIR

For each of the first N CIFAR-10 test records it writes, under DIR:

- rec<i>_32.png:   the record's 32x32 pixels, losslessly;
- rec<i>_256.png:  the same picture upscaled to 256x256 by PIL (bilinear); for a 224 model this
                   needs no resize in the service's recipe, only the center crop, so both sides
                   must produce the very same tensor;
- rec<i>_photo.png: the same picture made photo-sized and non-square (500x375, PIL bicubic), which
                   the service's recipe shrinks (antialiased) to 341x256 before the crop;
- crop<i>.f32 / png256_<i>.f32 / photo<i>.f32: the preprocessed CHW float32 tensors (little
                   endian) of rec<i>_32.png, rec<i>_256.png and rec<i>_photo.png, made here with
                   PIL + numpy following docs/infer_service.md;
- results.json:    for each record, top-1 and logits of the model on those tensors, and the
                   top-1 with the "direct" variant (resize ratio 1: straight to 224x224).

The model runs once per variant on a batch of all records, like the Rust side does.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RECORD_BYTES = 3073


def round_half_up(x):
    # Rust's f64::round (half away from zero) for the positive sizes used here.
    return int(math.floor(x + 0.5))


def resized_dimensions(width, height, model_h, model_w, ratio):
    cover_w = round_half_up(model_w * ratio)
    cover_h = round_half_up(model_h * ratio)
    scale = max(cover_w / width, cover_h / height)
    return max(cover_w, round_half_up(width * scale)), max(cover_h, round_half_up(height * scale))


def preprocess(image, model_h, model_w, ratio):
    """Resize to cover ratio x model size (bilinear), center-crop, scale to [0,1], normalise, CHW."""
    image = image.convert("RGB")
    new_w, new_h = resized_dimensions(image.width, image.height, model_h, model_w, ratio)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - model_w) // 2, (new_h - model_h) // 2
    image = image.crop((left, top, left + model_w, top + model_h))
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    pixels = (pixels - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def cifar_records(path, count):
    raw = np.fromfile(path, dtype=np.uint8, count=count * RECORD_BYTES).reshape(count, RECORD_BYTES)
    for row in raw:
        yield int(row[0]), Image.fromarray(row[1:].reshape(3, 32, 32).transpose(1, 2, 0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    _, _, model_h, model_w = model_input.shape
    default_ratio = 256.0 / 224.0
    args.out.mkdir(parents=True, exist_ok=True)

    labels, crop, png256, photo, direct = [], [], [], [], []
    for i, (label, image) in enumerate(cifar_records(args.cifar, args.records)):
        labels.append(label)
        small = args.out / f"rec{i}_32.png"
        image.save(small)
        large = args.out / f"rec{i}_256.png"
        image.resize((256, 256), Image.BILINEAR).save(large)
        photo_path = args.out / f"rec{i}_photo.png"
        image.resize((500, 375), Image.BICUBIC).save(photo_path)
        # Read back from the files, as the service reads the bytes it is sent.
        crop.append(preprocess(Image.open(small), model_h, model_w, default_ratio))
        png256.append(preprocess(Image.open(large), model_h, model_w, default_ratio))
        photo.append(preprocess(Image.open(photo_path), model_h, model_w, default_ratio))
        direct.append(preprocess(Image.open(small), model_h, model_w, 1.0))
        crop[-1].tofile(args.out / f"crop{i}.f32")
        png256[-1].tofile(args.out / f"png256_{i}.f32")
        photo[-1].tofile(args.out / f"photo{i}.f32")

    def run(tensors):
        return session.run(None, {model_input.name: np.stack(tensors)})[0]

    crop_scores, png256_scores, direct_scores = run(crop), run(png256), run(direct)
    photo_scores = run(photo)
    records = []
    for i, label in enumerate(labels):
        records.append(
            {
                "index": i,
                "cifar_label": label,
                "crop_top1": int(crop_scores[i].argmax()),
                "crop_logits": crop_scores[i].tolist(),
                "png256_top1": int(png256_scores[i].argmax()),
                "png256_logits": png256_scores[i].tolist(),
                "photo_top1": int(photo_scores[i].argmax()),
                "photo_logits": photo_scores[i].tolist(),
                "direct_top1": int(direct_scores[i].argmax()),
                "direct_logits": direct_scores[i].tolist(),
            }
        )
    result = {"onnxruntime": ort.__version__, "height": model_h, "width": model_w, "records": records}
    (args.out / "results.json").write_text(json.dumps(result))
    print(json.dumps({r["index"]: [r["crop_top1"], r["png256_top1"], r["photo_top1"], r["direct_top1"]] for r in records}))


if __name__ == "__main__":
    main()
