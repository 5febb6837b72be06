"""A long-running process keeps its native memory bounded while input shapes vary."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# The bfloat16 products and convolutions of a Whisper-tiny-sized encoder layer (its attention
# in float32, as `WhisperModel` runs it) over 300 input lengths, as the encoder sees them: every
# utterance length is a new shape. Resident MiB after the first 50 lengths and after all of
# them, with malloc's free pages handed back each time.
SCRIPT = textwrap.dedent(
    """
    import json, random, sys
    from streamasr.server.worker import limit_native_memory, trim_heap
    if sys.argv[1] == "limited":
        limit_native_memory()
    import torch

    def rss_mib():
        status = open("/proc/self/status").read()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    torch.set_num_threads(1)
    dt = torch.bfloat16
    conv = torch.nn.Conv1d(80, 384, 3, padding=1).to(dt)
    fc = torch.nn.Linear(384, 1536).to(dt)
    rng = random.Random(0)
    lengths = rng.sample(range(20, 1500), 300)
    seen = []
    with torch.inference_mode():
        for i, t in enumerate(lengths, 1):
            x = conv(torch.randn(1, 80, t, dtype=dt)).transpose(1, 2)
            q = fc(x)[..., :384].reshape(1, t, 6, 64).transpose(1, 2).float()
            torch.nn.functional.scaled_dot_product_attention(q, q, q)  # float32, as the model
            if i in (50, 300):
                trim_heap()
                seen.append(rss_mib())
    print(json.dumps(seen))
    """
)


def resident(mode: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr
    return [float(x) for x in json.loads(out.stdout.splitlines()[-1])]


def test_varying_shapes_do_not_grow_the_daemons_memory() -> None:
    """Without the limits this grew by 60-100 MiB over the last 250 lengths (oneDNN keeps
    every new shape's kernels); with them it stays within a few MiB."""
    after_50, after_300 = resident("limited")
    assert after_300 - after_50 < 16, (after_50, after_300)
