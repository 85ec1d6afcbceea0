"""Benchmark: peak memory of validate's image check on decompression bombs.

    python bench/bomb_memory.py

Each image is checked by `components.validate.inspect_image` in a fresh interpreter (so its
peak RSS is that check's alone): a 48 px PNG (the baseline: the interpreter, Pillow, numpy,
the settings), an 8000 x 8000 photo-sized PNG (kept: decoded in full), and two crafted PNG
headers claiming 12000^2 and 100000^2 RGB pixels over 64 bytes of data (decoding them would
take 432 MB and 30 GB). Writes `bench/results/bomb_memory.json`. Target (issue #13): the
bombs cost no more than the baseline (+40 MB), judged from the header before decoding.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_INSPECT = """
import resource, sys, time
from pathlib import Path
from components.settings import load_settings
from components.validate import inspect_image
cfg = load_settings("ci").validate_
data = Path(sys.argv[1]).read_bytes()
t0 = time.perf_counter()
facts = inspect_image(data, cfg, embed=True)
print(",".join(facts.reasons) or "kept", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      time.perf_counter() - t0)
"""


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def main() -> None:
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        Image.new("RGB", (48, 48), (1, 2, 3)).save(root / "small.png")
        Image.new("RGB", (8000, 8000), (200, 180, 160)).save(root / "photo-8000.png")
        (root / "bomb-12000.png").write_bytes(png_header_only(12000, 12000))
        (root / "bomb-100000.png").write_bytes(png_header_only(100000, 100000))
        for name in ("small.png", "photo-8000.png", "bomb-12000.png", "bomb-100000.png"):
            out = subprocess.run([sys.executable, "-c", _INSPECT, str(root / name)], cwd=REPO,
                                 check=True, capture_output=True, text=True).stdout.split()
            rows.append({"image": name, "bytes": (root / name).stat().st_size,
                         "verdict": out[0], "peak_rss_mb": round(int(out[1]) / 1024, 1),
                         "check_s": round(float(out[2]), 3)})
            print(rows[-1])
    base = rows[0]["peak_rss_mb"]
    result = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {platform.python_version()}",
              "rows": rows, "bomb_extra_mb": {r["image"]: round(r["peak_rss_mb"] - base, 1)
                                              for r in rows if r["image"].startswith("bomb")}}
    out = REPO / "bench" / "results" / "bomb_memory.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
