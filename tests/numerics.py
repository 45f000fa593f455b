"""Tolerances for tests that compare two fp32 code paths of one function, set from round-off measured on the
machine that runs the test instead of a number tuned on another one (issue 20).

Two fp32 evaluations of the same function (BN folded or not, PyTorch or onnxruntime, another batch size) differ
by round-off only, and how much depends on the kernels: oneDNN and onnxruntime pick other blockings and
accumulation orders on an Intel AMX Xeon than on an AMD AVX-512 or AVX2 machine. So the function is also
evaluated in float64 (round-off ~1e-16, nil at these scales) and the reference fp32 path's error against it is
measured here, with this CPU's kernels; the path under test must be no further from float64 than
`ROUNDOFF_FACTOR` times that, plus one fp32 ulp of the output scale (so an exact reference cannot make the bound
zero).

ROUNDOFF_FACTOR = 8: the worst-case error bound of a sum (gamma_n * sum |terms|) is the same for every
summation order, and the typical errors of different orders are of one size. Measured on AMD Zen 4 (1 thread,
max error over the logits of 2 inputs): the BN-folded copy of each zoo model in tests/test_fold.py has 0.5x to
2.7x the unfolded model's fp32 error (folding rounds each weight once more). A factor 8 is 3x the largest of
these; a wrong fold or a broken export errs by orders of magnitude more.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROUNDOFF_FACTOR = 8.0


def max_error(fp32: Tensor, exact: Tensor) -> float:
    """max |fp32 - exact| with `exact` the float64 evaluation."""
    return float((fp32.double() - exact.double()).abs().max())


def assert_within_roundoff(got: Tensor, exact: Tensor, reference: Tensor, what: str = "") -> None:
    """`got` (the path under test, fp32) is as close to `exact` (float64) as the reference fp32 path, within
    ROUNDOFF_FACTOR (see the module docstring)."""
    ulp = float(torch.finfo(torch.float32).eps) * float(exact.abs().max())
    bound = ROUNDOFF_FACTOR * max_error(reference, exact) + ulp
    err = max_error(got, exact)
    assert err <= bound, f"{what}: {err:.3g} from float64, the reference's round-off allows {bound:.3g}"


def float16_spacing(x: Tensor) -> Tensor:
    """The gap between adjacent float16 numbers at |x|: 2^(e - 11) for |x| in [2^(e-1), 2^e), 2^-24 (the
    subnormal step) below 2^-14."""
    _, exponent = torch.frexp(x.abs().double())
    gap = torch.ldexp(torch.ones_like(x, dtype=torch.float64), exponent - 11)
    return torch.where(x == 0, 2.0**-24, gap.clamp_min(2.0**-24))
