"""Peak memory of encoding one 15 MiB passage, with and without cutting it to what the model reads first.

    python bench/huge_passage.py            # both, each in a fresh process

auditor.encoder.encode cuts a text to max_seq_length * CHARS_PER_TOKEN_BOUND characters before tokenising; the model
reads only its first max_seq_length tokens either way, so the vector is the same (tests/test_embed.py checks it).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys


def _one(clip: bool) -> None:
    from auditor import encoder
    from auditor.encoder import encode, load_model

    if not clip:
        encoder.clip_chars = lambda _model: 10**12
    model = load_model()
    encode(model, ["warm up"], "document")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    words = "the boundary layer on a flat plate separates under an adverse pressure gradient ".split()
    huge = " ".join(words[i % len(words)] for i in range(2_500_000))
    encode(model, [huge], "document")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{'cut first' if clip else 'whole text'}: {len(huge.encode()) / 2**20:.1f} MiB passage, peak RSS "
          f"{peak / 1024:,.0f} MB (model loaded: {before / 1024:,.0f} MB)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--cut", "--whole"):
        _one(sys.argv[1] == "--cut")
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for flag in ("--whole", "--cut"):
        subprocess.run([sys.executable, __file__, flag], check=True, env=env)


if __name__ == "__main__":
    main()
