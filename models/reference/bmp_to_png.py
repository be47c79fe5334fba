#!/usr/bin/env python3
"""Lossless BMP -> PNG conversion for the shipped ImageNet sample photos (stdlib only).

The upstream samples (google-coral/test_data) are 24-bit BMPs, which are large and which
few image crates read well; PNG keeps every pixel while making the files smaller and
universally decodable. Only stdlib (struct + zlib) is used so that the conversion can be
re-run anywhere and audited line by line.

Usage (from the repository root):
    python models/reference/bmp_to_png.py [--src ../shared/data/imagenet-samples]
                                          [--dst models/samples/imagenet]

Every written PNG is decoded again and compared pixel for pixel with its BMP; any
mismatch aborts with an error.
"""

import argparse
import os
import struct
import sys
import zlib

SAMPLES = ("grace_hopper", "cat", "bird", "dragonfly")


def read_bmp(path):
    """Return (width, height, rgb_bytes) with rows top-down, 3 bytes per pixel.

    Only uncompressed 24-bit BMPs are accepted (what the samples are); anything else is
    rejected rather than guessed at, because a silent mis-decode would poison every
    downstream reference value.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"BM":
        raise ValueError(f"{path}: not a BMP file")
    pixel_offset = struct.unpack_from("<I", data, 10)[0]
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size < 40:
        raise ValueError(f"{path}: OS/2 BMP headers are not supported")
    width, height, planes, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    if planes != 1 or bpp != 24 or compression != 0:
        raise ValueError(
            f"{path}: need 24-bit uncompressed BMP, got bpp={bpp} compression={compression}"
        )
    if width <= 0 or height == 0:
        raise ValueError(f"{path}: bad dimensions {width}x{height}")
    bottom_up = height > 0
    height = abs(height)
    stride = (width * 3 + 3) // 4 * 4  # rows are padded to a multiple of 4 bytes
    if pixel_offset + stride * height > len(data):
        raise ValueError(f"{path}: truncated pixel data")
    rows = []
    for y in range(height):
        src_row = height - 1 - y if bottom_up else y
        start = pixel_offset + src_row * stride
        bgr = data[start : start + width * 3]
        rgb = bytearray(width * 3)
        rgb[0::3] = bgr[2::3]
        rgb[1::3] = bgr[1::3]
        rgb[2::3] = bgr[0::3]
        rows.append(bytes(rgb))
    return width, height, b"".join(rows)


def _chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png(width, height, rgb):
    """8-bit RGB, non-interlaced, every row with filter type 0 (None).

    Filter 0 keeps the encoder trivially verifiable; the size cost against adaptive
    filtering is irrelevant for four sample photos.
    """
    row_len = width * 3
    raw = b"".join(b"\x00" + rgb[y * row_len : (y + 1) * row_len] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def decode_png(data):
    """Decode exactly the PNG subset encode_png writes (8-bit RGB, filter 0).

    Independent of the encoder's in-memory state: it re-parses the bytes, checks every
    chunk CRC and rejects any filter other than 0, so it really verifies the file on disk.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad CRC in {kind!r} chunk")
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, color, comp, filt, interlace = ihdr
    if (depth, color, comp, filt, interlace) != (8, 2, 0, 0, 0):
        raise ValueError(f"unsupported PNG format {ihdr}")
    raw = zlib.decompress(b"".join(idat))
    row_len = width * 3
    if len(raw) != height * (row_len + 1):
        raise ValueError("wrong decompressed size")
    rows = []
    for y in range(height):
        start = y * (row_len + 1)
        if raw[start] != 0:
            raise ValueError(f"row {y}: filter {raw[start]} (only 0 supported)")
        rows.append(raw[start + 1 : start + 1 + row_len])
    return width, height, b"".join(rows)


def main(argv=None):
    repo_root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default=os.path.join(repo_root, "..", "shared", "data", "imagenet-samples"))
    parser.add_argument("--dst", default=os.path.join(repo_root, "models", "samples", "imagenet"))
    parser.add_argument("names", nargs="*", default=list(SAMPLES), help="sample names (without .bmp)")
    args = parser.parse_args(argv)

    os.makedirs(args.dst, exist_ok=True)
    for name in args.names:
        width, height, rgb = read_bmp(os.path.join(args.src, name + ".bmp"))
        png = encode_png(width, height, rgb)
        out_path = os.path.join(args.dst, name + ".png")
        with open(out_path, "wb") as f:
            f.write(png)
        with open(out_path, "rb") as f:
            check = decode_png(f.read())
        if check != (width, height, rgb):
            sys.exit(f"{name}: PNG round trip does not reproduce the BMP pixels")
        print(f"{name}: {width}x{height}, {len(png)} bytes, pixels verified identical")


if __name__ == "__main__":
    main()
