"""Minimal baseline (sequential Huffman) JPEG decoder in numpy.

The reference script may not depend on PIL or other image libraries, yet one of the
reference photos (hot_dog.jpg) is a JPEG. This decoder covers exactly what such photos
need: SOF0/SOF1, 8-bit samples, 1 or 3 components, any sampling factors (chroma is
upsampled by pixel replication), restart intervals. Progressive and arithmetic-coded
files are rejected instead of being decoded wrongly.

The IDCT is the exact floating-point transform (float64), and colour conversion uses the
JFIF equations with round-to-nearest. libjpeg's integer IDCT ("islow") can differ from
this by about one grey level in a few pixels; the reference results do not depend on
differences that small.
"""

import struct

import numpy as np

ZIGZAG = np.array(
    [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
        12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
        35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ]
)


def _ceil_div(a, b):
    return -(-a // b)


def _idct_matrix():
    """C[u, x] = c(u)/2 * cos((2x+1) u pi / 16); block = C^T F C."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    c = np.where(u == 0, np.sqrt(0.5), 1.0)
    return 0.5 * c * np.cos((2 * x + 1) * u * np.pi / 16)


class _Huffman:
    """Canonical Huffman table as a dict keyed by (code length, code)."""

    def __init__(self, counts, symbols):
        self.table = {}
        code, k = 0, 0
        for length in range(1, 17):
            for _ in range(counts[length - 1]):
                self.table[(length, code)] = symbols[k]
                code += 1
                k += 1
            code <<= 1


class _BitReader:
    """Reads bits MSB-first from entropy-coded data that has already been unstuffed."""

    def __init__(self, data):
        self.data = data
        self.nbits = len(data) * 8
        self.pos = 0

    def bit(self):
        pos = self.pos
        if pos >= self.nbits:
            return 1  # JPEG pads incomplete bytes with 1-bits
        self.pos = pos + 1
        return (self.data[pos >> 3] >> (7 - (pos & 7))) & 1

    def bits(self, n):
        v = 0
        for _ in range(n):
            v = (v << 1) | self.bit()
        return v

    def decode(self, huff):
        code = 0
        for length in range(1, 17):
            code = (code << 1) | self.bit()
            sym = huff.table.get((length, code))
            if sym is not None:
                return sym
        raise ValueError("invalid Huffman code")

    def receive_extend(self, s):
        if s == 0:
            return 0
        v = self.bits(s)
        return v if v >= (1 << (s - 1)) else v - (1 << s) + 1


def _split_scan(data, start):
    """Return the unstuffed restart intervals of a scan and the offset after it."""
    segments, cur, i = [], bytearray(), start
    while i < len(data):
        b = data[i]
        if b != 0xFF:
            cur.append(b)
            i += 1
            continue
        m = data[i + 1]
        if m == 0x00:
            cur.append(0xFF)
            i += 2
        elif 0xD0 <= m <= 0xD7:
            segments.append(bytes(cur))
            cur = bytearray()
            i += 2
        elif m == 0xFF:
            i += 1  # fill byte
        else:
            break
    segments.append(bytes(cur))
    return segments, i


def decode_jpeg(data):
    """Decode a baseline JPEG; returns uint8 array [H, W, 3] (or [H, W, 1] for greyscale)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    qt, dc_tables, ac_tables = {}, {}, {}
    frame, restart, coeffs = None, 0, None
    i = 2
    while i < len(data):
        if data[i] != 0xFF:
            raise ValueError(f"expected marker at {i}")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:  # EOI
            break
        (length,) = struct.unpack_from(">H", data, i + 2)
        seg = data[i + 4 : i + 2 + length]
        if marker == 0xDB:
            p = 0
            while p < len(seg):
                pq, tq = seg[p] >> 4, seg[p] & 15
                if pq == 0:
                    vals = np.frombuffer(seg[p + 1 : p + 65], dtype=np.uint8).astype(np.int64)
                    p += 65
                else:
                    vals = np.frombuffer(seg[p + 1 : p + 129], dtype=">u2").astype(np.int64)
                    p += 129
                table = np.zeros(64, dtype=np.int64)
                table[ZIGZAG] = vals  # stored in zigzag order
                qt[tq] = table
        elif marker == 0xC4:
            p = 0
            while p < len(seg):
                tc, th = seg[p] >> 4, seg[p] & 15
                counts = list(seg[p + 1 : p + 17])
                n = sum(counts)
                table = _Huffman(counts, list(seg[p + 17 : p + 17 + n]))
                (dc_tables if tc == 0 else ac_tables)[th] = table
                p += 17 + n
        elif marker in (0xC0, 0xC1):
            precision, height, width, ncomp = struct.unpack_from(">BHHB", seg, 0)
            if precision != 8:
                raise ValueError("only 8-bit JPEG supported")
            comps = []
            for k in range(ncomp):
                cid, hv, tq = seg[6 + 3 * k : 9 + 3 * k]
                comps.append({"id": cid, "h": hv >> 4, "v": hv & 15, "tq": tq})
            hmax = max(c["h"] for c in comps)
            vmax = max(c["v"] for c in comps)
            mcux = _ceil_div(width, 8 * hmax)
            mcuy = _ceil_div(height, 8 * vmax)
            for c in comps:
                c["bw"], c["bh"] = mcux * c["h"], mcuy * c["v"]
            frame = (width, height, comps, hmax, vmax, mcux, mcuy)
            coeffs = [np.zeros((c["bh"], c["bw"], 64), dtype=np.int64) for c in comps]
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise ValueError(f"unsupported JPEG process (SOF marker 0x{marker:02X})")
        elif marker == 0xDD:
            (restart,) = struct.unpack_from(">H", seg, 0)
        elif marker == 0xDA:
            width, height, comps, hmax, vmax, mcux, mcuy = frame
            ns = seg[0]
            scomps = []
            for k in range(ns):
                cid, tables = seg[1 + 2 * k], seg[2 + 2 * k]
                idx = next(j for j, c in enumerate(comps) if c["id"] == cid)
                scomps.append((idx, dc_tables[tables >> 4], ac_tables[tables & 15]))
            segments, end = _split_scan(data, i + 2 + length)
            _decode_scan(segments, scomps, comps, coeffs, width, height, mcux, mcuy, restart, ns)
            i = end
            continue
        i += 2 + length

    width, height, comps, hmax, vmax, mcux, mcuy = frame
    C = _idct_matrix()
    planes = []
    for c, co in zip(comps, coeffs):
        q = qt[c["tq"]]
        blocks = (co * q).reshape(c["bh"], c["bw"], 8, 8).astype(np.float64)
        pix = np.einsum("ux,abuv,vy->abxy", C, blocks, C)
        plane = pix.transpose(0, 2, 1, 3).reshape(c["bh"] * 8, c["bw"] * 8) + 128.0
        plane = np.repeat(np.repeat(plane, vmax // c["v"], axis=0), hmax // c["h"], axis=1)
        # Level-shifted samples are rounded and clamped to 8 bits before colour
        # conversion, as every real decoder does.
        planes.append(np.clip(np.round(plane[:height, :width]), 0, 255))
    if len(planes) == 1:
        return planes[0].astype(np.uint8)[:, :, None]
    y, cb, cr = planes[0], planes[1] - 128.0, planes[2] - 128.0
    rgb = np.stack(
        [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1
    )
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _decode_scan(segments, scomps, comps, coeffs, width, height, mcux, mcuy, restart, ns):
    if ns == 1:
        # Non-interleaved: blocks of the one component in raster order over its own extent.
        idx = scomps[0][0]
        c = comps[idx]
        hmax = max(cc["h"] for cc in comps)
        vmax = max(cc["v"] for cc in comps)
        # A lone component is coded over its own extent, not the MCU-padded one.
        bw = _ceil_div(_ceil_div(width * c["h"], hmax), 8)
        bh = _ceil_div(_ceil_div(height * c["v"], vmax), 8)
        units = [[(idx, by, bx)] for by in range(bh) for bx in range(bw)]
    else:
        units = []
        for my in range(mcuy):
            for mx in range(mcux):
                unit = []
                for idx, _, _ in scomps:
                    c = comps[idx]
                    for v in range(c["v"]):
                        for h in range(c["h"]):
                            unit.append((idx, my * c["v"] + v, mx * c["h"] + h))
                units.append(unit)
    tables = {idx: (dc, ac) for idx, dc, ac in scomps}
    per_segment = restart if restart else len(units)
    for s, seg in enumerate(segments):
        chunk = units[s * per_segment : (s + 1) * per_segment]
        if not chunk:
            break
        reader = _BitReader(seg)
        pred = {idx: 0 for idx, _, _ in scomps}
        for unit in chunk:
            for idx, by, bx in unit:
                dc, ac = tables[idx]
                block = np.zeros(64, dtype=np.int64)
                t = reader.decode(dc)
                pred[idx] += reader.receive_extend(t)
                block[0] = pred[idx]
                k = 1
                while k < 64:
                    rs = reader.decode(ac)
                    r, size = rs >> 4, rs & 15
                    if size == 0:
                        if r != 15:
                            break  # end of block
                        k += 16
                        continue
                    k += r
                    block[ZIGZAG[k]] = reader.receive_extend(size)
                    k += 1
                coeffs[idx][by, bx] = block
