"""Writes frames.json: small test frames in every pixel format edgemm's pipeline accepts, with
the RGB each must convert to, computed here independently of the Rust code.

The YUV formulas come straight from ITU-R BT.601 (Kr = 0.299, Kb = 0.114) in floating point,
then rounded to nearest and clipped to 0..255; the Rust side uses 14-bit fixed point, so the
test allows a difference of 1. Chroma is nearest-sited: pixel (x, y) takes the chroma sample
(x // 2, y // 2), which is what runtime/src/pipeline/frame.rs documents.

Frames have odd and even sizes and padded strides (padding bytes set to 0xEE so that reading
them shows up as a wrong pixel). Run from anywhere:

    python make_reference.py        # rewrites frames.json next to this file
"""

import json
import os

import numpy as np

KR, KB = 0.299, 0.114
KG = 1.0 - KR - KB
SIZES = [(7, 5), (8, 6), (1, 1), (3, 2), (37, 3)]  # 37: two 16-pixel blocks and a tail
PAD = 3  # extra bytes per row in the padded-stride variants


def yuv_to_rgb(y, u, v, full):
    y, u, v = (a.astype(np.float64) for a in (y, u, v))
    if full:
        yp, pb, pr = y / 255.0, (u - 128.0) / 255.0, (v - 128.0) / 255.0
    else:
        yp, pb, pr = (y - 16.0) / 219.0, (u - 128.0) / 224.0, (v - 128.0) / 224.0
    r = yp + 2.0 * (1.0 - KR) * pr
    g = yp - (2.0 * KB * (1.0 - KB) / KG) * pb - (2.0 * KR * (1.0 - KR) / KG) * pr
    b = yp + 2.0 * (1.0 - KB) * pb
    rgb = np.stack([r, g, b], axis=-1) * 255.0
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def with_stride(rows, pad):
    """rows: 2-D uint8 (rows x row_bytes) -> (bytes with `pad` 0xEE bytes after each row, stride)."""
    h, row_bytes = rows.shape
    stride = row_bytes + pad
    out = np.full((h, stride), 0xEE, dtype=np.uint8)
    out[:, :row_bytes] = rows
    flat = out.reshape(-1)
    # The last row need not be padded: cameras often hand over exactly stride*(h-1)+row_bytes.
    return flat[: stride * (h - 1) + row_bytes], stride


def case(fmt, w, h, pad, rng, full):
    cw, ch = (w + 1) // 2, (h + 1) // 2
    ys = rng.randint(0, 256, size=(h, w)).astype(np.uint8)
    planes = []
    if fmt in ("RGB24", "BGR24", "RGBA", "BGRA"):
        rgb = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
        order = [0, 1, 2] if fmt.startswith("RGB") else [2, 1, 0]
        px = rgb[:, :, order]
        if fmt.endswith("A"):
            alpha = rng.randint(0, 256, size=(h, w, 1)).astype(np.uint8)
            px = np.concatenate([px, alpha], axis=-1)
        planes.append(with_stride(px.reshape(h, -1), pad))
        expected = rgb
    elif fmt == "GRAY8":
        planes.append(with_stride(ys, pad))
        expected = np.repeat(ys[:, :, None], 3, axis=-1)
    else:
        us = rng.randint(0, 256, size=(ch, cw)).astype(np.uint8)
        vs = rng.randint(0, 256, size=(ch, cw)).astype(np.uint8)
        up = us.repeat(2, axis=0).repeat(2, axis=1)[:h, :w]
        vp = vs.repeat(2, axis=0).repeat(2, axis=1)[:h, :w]
        if fmt in ("NV12", "NV21"):
            first, second = (us, vs) if fmt == "NV12" else (vs, us)
            inter = np.stack([first, second], axis=-1).reshape(ch, 2 * cw)
            planes += [with_stride(ys, pad), with_stride(inter, pad)]
        elif fmt == "I420":
            planes += [with_stride(ys, pad), with_stride(us, pad), with_stride(vs, pad)]
        elif fmt == "YUYV":
            # Y0 U Y1 V per pair of pixels; an odd width's last pair has an unused Y1.
            ypad = np.zeros((h, 2 * cw), dtype=np.uint8)
            ypad[:, :w] = ys
            ypad[:, w:] = 0x55
            uh = us.repeat(2, axis=0)[:h]
            vh = vs.repeat(2, axis=0)[:h]
            packed = np.stack([ypad[:, 0::2], uh, ypad[:, 1::2], vh], axis=-1).reshape(h, 4 * cw)
            planes.append(with_stride(packed, pad))
        expected = yuv_to_rgb(ys, up, vp, full)
    return {
        "format": fmt,
        "width": w,
        "height": h,
        "range": "full" if full else "limited",
        "strides": [s for _, s in planes],
        "planes": [p.tolist() for p, _ in planes],
        "expected_rgb": expected.reshape(-1).tolist(),
    }


def main():
    rng = np.random.RandomState(6)
    cases = []
    for fmt in ["RGB24", "BGR24", "RGBA", "BGRA", "GRAY8", "NV12", "NV21", "I420", "YUYV"]:
        yuv = fmt in ("NV12", "NV21", "I420", "YUYV")
        for full in ([False, True] if yuv else [False]):
            for w, h in SIZES:
                for pad in (0, PAD):
                    cases.append(case(fmt, w, h, pad, rng, full))
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "frames.json"), "w") as f:
        json.dump({"generator": "make_reference.py", "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
