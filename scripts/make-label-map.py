#!/usr/bin/env python3
"""Writes data/label_maps/imagenet_to_cifar10.csv: each ImageNet-1k class -> a CIFAR-10 name or "other".

Usage: scripts/make-label-map.py [--classes FILE] [--output FILE]

--classes defaults to imagenet_classes.txt in $IOT_ASSETS_DIR, else ../shared/assets next to the
repository. Standard library only. The output is committed; rerun this after changing a range.

The ranges are 0-based ImageNet class indices (the standard ILSVRC-2012 order, the order of the
model outputs). Animal ranges are the ones used for the verification run documented in the
assets' SOURCES.md; vehicles are filled in from the class list (see docs/infer_service.md,
"Label map"). Each single class listed carries its expected first name, and every range its
expected first and last names, so an off-by-one or a different class list fails loudly.
"""

import argparse
import csv
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# label -> list of (first, last, expected name of first, expected name of last); last inclusive.
RANGES = {
    "airplane": [
        (404, 404, "airliner", "airliner"),
        (895, 895, "warplane", "warplane"),
        (908, 908, "wing", "wing"),
    ],
    "automobile": [
        (407, 407, "ambulance", "ambulance"),
        (436, 436, "beach wagon", "beach wagon"),
        (468, 468, "cab", "cab"),
        (511, 511, "convertible", "convertible"),
        (609, 609, "jeep", "jeep"),
        (627, 627, "limousine", "limousine"),
        (656, 656, "minivan", "minivan"),
        (661, 661, "Model T", "Model T"),
        (717, 717, "pickup", "pickup"),
        (734, 734, "police van", "police van"),
        (751, 751, "racer", "racer"),
        (817, 817, "sports car", "sports car"),
    ],
    "bird": [
        (7, 24, "cock", "great grey owl"),
        (80, 100, "black grouse", "black swan"),
        (127, 146, "white stork", "albatross"),
    ],
    "cat": [(281, 285, "tabby", "Egyptian cat")],
    "deer": [(348, 353, "ram", "gazelle")],
    "dog": [(151, 268, "Chihuahua", "Mexican hairless")],
    "frog": [(25, 32, "European fire salamander", "tailed frog")],
    "horse": [
        (339, 339, "sorrel", "sorrel"),
        (345, 347, "ox", "bison"),
        (603, 603, "horse cart", "horse cart"),
    ],
    "ship": [
        (index, index, name, name)
        for index, name in [
            (403, "aircraft carrier"),
            (472, "canoe"),
            (484, "catamaran"),
            (510, "container ship"),
            (554, "fireboat"),
            (576, "gondola"),
            (625, "lifeboat"),
            (628, "liner"),
            (693, "paddle"),
            (724, "pirate"),
            (780, "schooner"),
            (814, "speedboat"),
            (833, "submarine"),
            (871, "trimaran"),
            (913, "wreck"),
            (914, "yawl"),
        ]
    ],
    "truck": [
        (555, 555, "fire engine", "fire engine"),
        (569, 569, "garbage truck", "garbage truck"),
        (675, 675, "moving van", "moving van"),
        (757, 757, "recreational vehicle", "recreational vehicle"),
        (803, 803, "snowplow", "snowplow"),
        (864, 864, "tow truck", "tow truck"),
        (867, 867, "trailer truck", "trailer truck"),
    ],
}
FALLBACK = "other"


def default_classes_path():
    assets = os.environ.get("IOT_ASSETS_DIR")
    if assets:
        return Path(assets) / "imagenet_classes.txt"
    return ROOT.parent / "shared" / "assets" / "imagenet_classes.txt"


def first_name(class_line):
    return class_line.split(",")[0].strip()


def build(classes):
    labels = [FALLBACK] * len(classes)
    for label, ranges in RANGES.items():
        for first, last, first_expected, last_expected in ranges:
            if last >= len(classes):
                sys.exit(f"{label}: index {last} beyond the {len(classes)} classes")
            for index, expected in ((first, first_expected), (last, last_expected)):
                if first_name(classes[index]) != expected:
                    sys.exit(f"{label}: class {index} is {classes[index]!r}, expected {expected!r}")
            for index in range(first, last + 1):
                if labels[index] != FALLBACK:
                    sys.exit(f"class {index} mapped twice ({labels[index]} and {label})")
                labels[index] = label
    return labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=Path, default=default_classes_path())
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "label_maps" / "imagenet_to_cifar10.csv")
    args = parser.parse_args()

    if not args.classes.is_file():
        sys.exit(f"classes file {args.classes} not found (set IOT_ASSETS_DIR or pass --classes)")
    classes = args.classes.read_text(encoding="utf-8").split("\n")
    if classes and classes[-1] == "":
        classes.pop()
    if len(classes) != 1000:
        sys.exit(f"{args.classes} has {len(classes)} classes, expected the 1000 ImageNet-1k classes")

    labels = build(classes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["imagenet_index", "imagenet_class", "label"])
        for index, (name, label) in enumerate(zip(classes, labels)):
            writer.writerow([index, name, label])

    counts = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    summary = ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
    print(f"wrote {args.output}: {summary}", file=sys.stderr)


if __name__ == "__main__":
    main()
