"""The device the kernel tests launch the Triton kernels on.

CUDA when torch sees a GPU and Triton's CPU interpreter is off; otherwise the CPU, where
tests/conftest.py has set TRITON_INTERPRET=1 so that the same kernels run in the interpreter.
Inputs are drawn on the CPU from seeds and then moved, and the float64 references run on the
CPU, so both devices check the kernels on the same numbers.
"""

from __future__ import annotations

import torch
from streamasr.kernels.dispatch import interpreting

DEVICE = torch.device("cuda" if torch.cuda.is_available() and not interpreting() else "cpu")
