"""What a user writes instead of `imgcls predict`: PIL decode, resize the shorter side, center crop, NumPy
normalisation, ONNX Runtime (fp32 or int8 file, same threads), batches of 32, the top-1 of every image as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--onnx", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("paths", nargs="+")
    args = p.parse_args()
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.onnx, sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    paths = []
    for item in args.paths:
        if os.path.isdir(item):  # the whole tree, as `imgcls predict` reads a folder of class subfolders
            found = (os.path.join(d, f) for d, _, files in os.walk(item) for f in files)
            paths += sorted(f for f in found if f.lower().endswith((".jpg", ".jpeg", ".png")))
        else:
            paths.append(item)
    out = []
    for i in range(0, len(paths), args.batch_size):
        batch = []
        for path in paths[i : i + args.batch_size]:
            im = Image.open(path).convert("RGB")
            w, h = im.size
            s = args.resize / min(w, h)
            im = im.resize((max(args.resize, round(w * s)), max(args.resize, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - args.size) // 2, (h - args.size) // 2
            batch.append(np.asarray(im.crop((left, top, left + args.size, top + args.size)), dtype=np.float32))
        x = (np.stack(batch).transpose(0, 3, 1, 2) / 255.0 - mean) / std
        (logits,) = session.run(None, {name: x.astype(np.float32)})
        out += [{"path": p, "index": int(k)} for p, k in zip(paths[i : i + args.batch_size], logits.argmax(1))]
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
