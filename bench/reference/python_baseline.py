#!/usr/bin/env python3
"""Plain Python onnxruntime baseline for infer-bench: the same model, images and batch size.

    .cache/venv/bin/python bench/reference/python_baseline.py \
        --model MODEL.onnx --cifar cifar10_test_batch.bin --images 256 --total 640 --batch 32

The images are the first --images CIFAR-10 test records, PNG-encoded in memory (as infer-bench
sends them). One process, one InferenceSession with onnxruntime's default threading, and a loop
over --total images in batches of --batch:

- end to end: decode each PNG (PIL), preprocess (tests/reference.py's function: the service's
  recipe), stack, session.run;
- run only: session.run on batches preprocessed beforehand.

Prints one JSON object: images/s for both, and the setup.
"""

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference import cifar_records, preprocess  # noqa: E402

RATIO = 256.0 / 224.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--images", type=int, default=256, help="distinct images (first CIFAR-10 test records)")
    parser.add_argument("--total", type=int, default=640, help="images classified per measurement")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    args = parser.parse_args()

    pngs = []
    for _, image in cifar_records(args.cifar, args.images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    _, _, height, width = model_input.shape
    order = [i % len(pngs) for i in range(args.total)]
    batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]

    def prepare(index):
        return preprocess(Image.open(io.BytesIO(pngs[index])), height, width, RATIO)

    # Warm-up: first runs allocate and pick kernels.
    session.run(None, {model_input.name: np.stack([prepare(i) for i in batches[0]])})

    started = time.perf_counter()
    for batch in batches:
        session.run(None, {model_input.name: np.stack([prepare(i) for i in batch])})
    end_to_end = time.perf_counter() - started

    prepared = [np.stack([prepare(i) for i in batch]) for batch in batches]
    started = time.perf_counter()
    for tensor in prepared:
        session.run(None, {model_input.name: tensor})
    run_only = time.perf_counter() - started

    print(
        json.dumps(
            {
                "onnxruntime": ort.__version__,
                "batch": args.batch,
                "threads": args.threads,
                "images": args.total,
                "end_to_end_images_per_s": args.total / end_to_end,
                "run_only_images_per_s": args.total / run_only,
            }
        )
    )


if __name__ == "__main__":
    main()
