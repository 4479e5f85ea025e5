#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into fuzz/corpus/<target>/ (docs/fuzzing.md).

Run with the project's venv (Pillow and pymongo's bson): .cache/venv/bin/python fuzz/make_seeds.py
The committed corpora are these seeds plus what the fuzzer found, minimised by `scripts/fuzz cmin`
(which renames every input to its hash); rerunning this adds the seeds again under their names.
Images are kept tiny so that every execution stays fast; a few are CIFAR-10 test records.
"""
import base64
import io
import json
import os
import struct
import sys
from pathlib import Path

import bson
from PIL import Image

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "corpus"
CIFAR = Path(os.environ.get("IOT_ASSETS", "/work/shared/assets")) / "cifar10_test_batch.bin"


def write(target, name, data):
    path = OUT / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def encode(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def cifar_images(count):
    """The first `count` CIFAR-10 test records as RGB images (label byte, then 1024 R, G, B bytes)."""
    if not CIFAR.exists():
        return []
    images = []
    with CIFAR.open("rb") as f:
        for _ in range(count):
            record = f.read(3073)
            planes = [record[1 + 1024 * c : 1 + 1024 * (c + 1)] for c in range(3)]
            pixels = bytes(b for i in range(1024) for b in (planes[0][i], planes[1][i], planes[2][i]))
            images.append(Image.frombytes("RGB", (32, 32), pixels))
    return images


def images():
    """Small encoded images in every pixel layout the decoders handle, and some broken ones."""
    red = Image.new("RGB", (4, 4), (200, 10, 10))
    out = {
        "rgb4.png": encode(red, "PNG"),
        "rgba3.png": encode(Image.new("RGBA", (3, 2), (1, 2, 3, 128)), "PNG"),
        "grey5.png": encode(Image.new("L", (5, 1), 77), "PNG"),
        "grey16.png": encode(Image.new("I;16", (2, 2), 4000), "PNG"),
        "palette.png": encode(Image.new("P", (3, 3), 5), "PNG"),
        "one_bit.png": encode(Image.new("1", (9, 2), 1), "PNG"),
        "interlaced.png": encode(Image.new("RGB", (8, 8), (0, 90, 200)), "PNG", interlace=1),
        "rgb4.jpg": encode(red, "JPEG", quality=50),
        "grey.jpg": encode(Image.new("L", (8, 8), 30), "JPEG"),
        "progressive.jpg": encode(Image.new("RGB", (16, 8), (9, 9, 250)), "JPEG", progressive=True),
        "cmyk.jpg": encode(Image.new("CMYK", (8, 8), (1, 2, 3, 4)), "JPEG"),
        "subsampled.jpg": encode(Image.new("RGB", (17, 9), (40, 50, 60)), "JPEG", subsampling=2),
        "wide.png": encode(Image.new("RGB", (300, 1), (3, 3, 3)), "PNG"),
        "tall.png": encode(Image.new("RGB", (1, 300), (3, 3, 3)), "PNG"),
        "gif.gif": encode(Image.new("P", (2, 2)), "GIF"),
    }
    out["truncated.png"] = out["rgb4.png"][: len(out["rgb4.png"]) // 2]
    out["truncated.jpg"] = out["rgb4.jpg"][: len(out["rgb4.jpg"]) // 2]
    # A header claiming 60000x60000 pixels with almost no data.
    header = bytearray(out["rgb4.png"])
    header[16:24] = struct.pack(">II", 60000, 60000)
    out["huge_header.png"] = bytes(header)
    for i, image in enumerate(cifar_images(3)):
        out[f"cifar{i}.png"] = encode(image, "PNG")
        out[f"cifar{i}.jpg"] = encode(image, "JPEG", quality=75)
    return out


def ingest_message(encoded):
    good = {"ID": 4, "ProducerID": "cam-1", "GroundTruth": "cat", "SentAt": 1732450001000}
    for name, data in encoded.items():
        if name.startswith(("rgb4", "grey", "cifar0", "truncated", "huge", "gif", "cmyk")):
            write("ingest_message", f"msg_{name}", json.dumps({**good, "Data": base64.b64encode(data).decode()}))
    png = base64.b64encode(encoded["rgb4.png"]).decode()
    cases = {
        "unpadded": json.dumps({**good, "Data": png.rstrip("=")}),
        "spaces_in_base64": json.dumps({**good, "Data": f"  {png}\n"}),
        "escaped_producer": '{"ID":1,"ProducerID":"cam\\u002d\\"1\\"","GroundTruth":"c\\u00e4t","Data":"%s"}' % png,
        "duplicate_keys": '{"ID":1,"ProducerID":"a","ProducerID":"b","GroundTruth":"cat","Data":"%s"}' % png,
        "nested_decoy": '{"x":{"ProducerID":"decoy","ID":9},"ID":1,"ProducerID":"p","GroundTruth":"cat","Data":"%s"}' % png,
        "float_id": '{"ID":1.0,"ProducerID":"p","GroundTruth":"cat","Data":"%s"}' % png,
        "huge_id": '{"ID":18446744073709551616,"ProducerID":"p","GroundTruth":"cat","Data":"%s"}' % png,
        "negative_sent_at": '{"ID":-1,"ProducerID":"p","GroundTruth":"cat","SentAt":-9223372036854775808,"Data":"%s"}'
        % png,
        "null_field": json.dumps({**good, "Data": None}),
        "blank_producer": json.dumps({**good, "ProducerID": " \t", "Data": png}),
        "not_object": "[1,2,3]",
        "not_json": "hello {",
        "invalid_utf8": b'{"ID":1,"ProducerID":"\xff\xfe","GroundTruth":"cat","Data":""}',
        "deep_nesting": "[" * 200 + "]" * 200,
        "lone_surrogate": '{"ID":1,"ProducerID":"\\ud800","GroundTruth":"cat","Data":"%s"}' % png,
    }
    for name, text in cases.items():
        write("ingest_message", name, text)


def record_file():
    target = "dataflow_record_file"
    sample = (ROOT.parent / "data" / "mongo_entries.json").read_text()
    records = json.loads(sample)
    write(target, "mongo_entries_array.json", json.dumps(records[:6], indent=1))
    lines = "".join(json.dumps(r) + "\n" for r in records[:8])
    write(target, "lines.jsonl", lines)
    write(target, "lines_crlf_blank_no_final_newline.jsonl", lines.replace("\n", "\r\n\n  \n").rstrip())
    write(target, "bom.jsonl", "\ufeff" + lines)
    write(target, "bom_array.json", "\ufeff " + json.dumps(records[:2]))
    tricky = [
        '{"ProducerID":"p\\"1","GroundTruth":"cat","Inferred":"cat"}',
        '{"ProducerID":"p\\u0031","GroundTruth":"c\\u00e4t","Inferred":"c\\u00e4t"}',
        '{"ProducerID":"p","ProducerID":"q","GroundTruth":"cat"}',
        '{"nested":{"ProducerID":"decoy","GroundTruth":"x"},"ProducerID":"p","GroundTruth":"cat","Inferred":null}',
        '{"ProducerID":"p","GroundTruth":"cat","Deleted":true}',
        '{"ProducerID":"p","GroundTruth":"cat","Deleted":"true"}',
        '{"ID":18446744073709551616,"ProducerID":7,"GroundTruth":"cat"}',
        '{"ID":-0,"ProducerID":"p","GroundTruth":1e400,"Inferred":3.5}',
        '{"_id":{"$oid":"656a0f0e0d0c0b0a09080706"},"ProducerID":"p","GroundTruth":["cat"]}',
        "[1,2]",
        "not json",
        '{"ProducerID":"p","GroundTruth":"cat"',
        '{"ProducerID":"\\ud800","GroundTruth":"cat"}',
    ]
    write(target, "tricky.jsonl", "\n".join(tricky) + "\n")
    write(target, "invalid_utf8.jsonl", b'{"ProducerID":"\xc3\x28","GroundTruth":"cat"}\n{"ProducerID":"p","GroundTruth":"x"}\n')
    write(target, "tricky_array.json", "[" + ",".join(t for t in tricky if t.endswith(("}", "]"))) + ', 5, "x", null]')
    write(target, "broken_array.json", '[{"ProducerID":"a","GroundTruth":"x"}, {')
    write(target, "trailing_garbage_array.json", '[{"ProducerID":"a","GroundTruth":"x"}] ]')
    write(target, "csv_header.txt", "ProducerID,GroundTruth\n")
    write(target, "blank.txt", " \n\t\n")


def hostfile():
    target = "dataflow_hostfile"
    # The first byte picks the cluster size and process index (dataflow::fuzzing::hostfile).
    cases = {
        "two": b"\x01127.0.0.1:2101\n127.0.0.1:2102\n",
        "comments_blank_ipv6": b"\x05# cluster\nlocalhost:2101\n\n  10.0.0.2:2101  \n[::1]:2102\n",
        "crlf": b"\x03a:1\r\nb:2\r\nc:3\r\nd:4\r\n",
        "bad_port": b"\x01host:notaport\nh:0\n",
        "no_port": b"\x00localhost\n",
        "empty_host": b"\x01:80\n",
        "port_overflow": b"\x01h:65536\nh:+1\n",
        "too_few": b"\x03only:1\n",
        "invalid_utf8": b"\x01h\xff:1\n",
        "bom": b"\x01\xef\xbb\xbfh:1\nh:2\n",
    }
    for name, data in cases.items():
        write(target, name, data)


def mongo_document():
    target = "dataflow_mongo_document"
    from bson import ObjectId, Int64, Decimal128
    import datetime

    stored = json.loads((ROOT.parent / "data" / "mongo_entries.json").read_text())[0]
    stored["SentAt"] = datetime.datetime(2024, 11, 24, tzinfo=datetime.timezone.utc)
    docs = {
        "stored": stored,
        "pending": {"_id": "p/2", "ProducerID": "p", "GroundTruth": "cat"},
        "deleted": {"_id": "p/3", "ProducerID": "p", "GroundTruth": "cat", "Deleted": True},
        "mistyped": {"_id": "p/4", "ProducerID": "p", "GroundTruth": 4, "Inferred": [1]},
        "int_id": {"_id": 5, "GroundTruth": "cat"},
        "oid_id": {"_id": ObjectId("656a0f0e0d0c0b0a09080706"), "ProducerID": None, "GroundTruth": "cat"},
        "odd_ids": {"_id": {"a": Decimal128("1.5"), "b": Int64(7)}, "ProducerID": "p", "GroundTruth": "x"},
        "binary_id": {"_id": bson.Binary(b"\x00\x01", 4), "ProducerID": "p", "GroundTruth": "x", "Inferred": "x"},
        "nested": {"_id": "n", "x": {"ProducerID": "decoy"}, "ProducerID": "p", "GroundTruth": "y"},
    }
    for name, doc in docs.items():
        write(target, name, bson.encode(doc))
    # Duplicate keys and a wrong length prefix, which a well-behaved encoder never writes.
    dup = bson.encode({"ProducerID": "a", "GroundTruth": "cat"})
    write(target, "duplicate_keys", dup[:-1] + bson.encode({"ProducerID": "b"})[4:])
    good = bson.encode(docs["pending"])
    write(target, "bad_length", struct.pack("<i", len(good) + 9) + good[4:])
    write(target, "truncated", good[: len(good) // 2])
    write(target, "bad_utf8", good.replace(b"cat", b"c\xfft"))


def infer_image(encoded):
    for name, data in encoded.items():
        write("infer_image", name, data)
    write("infer_image", "base64_data_url", "data:image/png;base64," + base64.b64encode(encoded["rgb4.png"]).decode())
    write("infer_image", "base64_wrapped", base64.encodebytes(encoded["rgb4.jpg"]).decode())


def main():
    encoded = images()
    ingest_message(encoded)
    record_file()
    hostfile()
    mongo_document()
    infer_image(encoded)
    for target in sorted(OUT.iterdir()):
        print(f"{target.name}: {len(list(target.iterdir()))} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
