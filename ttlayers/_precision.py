"""Working precision, scale and round-off of the decompositions.

* **Precision**: the decompositions compute in float64 whatever the input dtype, and the cores
  are cast back to it at the end, so a float32 input is decomposed as accurately as its own
  values allow (float32's round-off, not float32 arithmetic's).
* **Scale**: the input is divided by the power of two nearest above its largest entry (exact:
  no digit is lost), so that no square, Gram matrix or norm can overflow or underflow, and the
  power is given back to the result at the end (:func:`from_work`): ranks and relative errors
  do not depend on the scale of the input.
* **Round-off**: a bond (unfolding ``m x n``) may drop directions whose energy together is at most
  ``(roundoff(dtype, max(m, n)) ||A||_F)^2``, with ``A`` the whole tensor (see :func:`roundoff`):
  such directions are numerically zero, and the decomposition without any bound is exact to
  this level.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS64 = float(torch.finfo(torch.float64).eps)
DATA_ROUNDOFF = 4.0  # in eps of the input dtype: a bond may drop 4 eps ||A||_F of energy as noise
STORAGE_ROUNDOFF = 2.0  # in eps of the input dtype per core: the error of storing a core in that dtype


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def roundoff(dtype: torch.dtype, long_side: int) -> float:
    """Relative (to ``||A||_F``) error of one bond that counts as round-off.

    Two terms, from a backward-error argument: the input is known only to its dtype's precision
    (each entry to within ``eps / 2`` relative, so ``||dA||_F <= eps / 2 ||A||_F``), and a float64
    QR or SVD of an unfolding is exact for the unfolding plus a perturbation of about
    ``sqrt(long_side) eps64`` relative (measured: at most ``0.12 sqrt(long_side) eps64`` on
    rank-deficient unfoldings of 10 x 10^6 to 1000 x 6720). Neither term grows with the short
    side, so a long unfolding does not lose directions that a square one would keep.
    """
    return DATA_ROUNDOFF * eps(dtype) + math.sqrt(long_side) * EPS64


def storage_roundoff(dtype: torch.dtype, n_cores: int) -> float:
    """Relative error of storing ``n_cores`` orthonormal cores in ``dtype``: kept out of the
    ``rel_eps`` budget, so that the bound holds for the cores returned, not only for the float64
    cores computed."""
    return STORAGE_ROUNDOFF * math.sqrt(n_cores) * eps(dtype)


def rel_eps_budget(rel_eps: float | None, dtype: torch.dtype, n_cores: int) -> float:
    """Squared relative error each of the ``n_cores - 1`` bonds may discard under ``rel_eps``
    (0 when there is no bound, or when ``rel_eps`` is below the round-off of storing the cores)."""
    if rel_eps is None or n_cores < 2:
        return 0.0
    usable = max(rel_eps - storage_roundoff(dtype, n_cores), 0.0)
    return usable ** 2 / (n_cores - 1)


def to_work(array: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(array / 2**exponent, exponent)`` in float64, with ``2**exponent`` the power of two just
    above the largest ``|entry|`` (exponent 0 for an all-zero array)."""
    work = array.to(torch.float64)
    peak = float(work.abs().max()) if work.numel() else 0.0
    if peak == 0.0:
        return work, 0
    exponent = math.frexp(peak)[1]
    return times_power_of_two(work, -exponent), exponent


def times_power_of_two(tensor: torch.Tensor, exponent: int) -> torch.Tensor:
    """``tensor * 2**exponent``, exact in float64 (in two halves, since ``2**exponent`` alone may
    not be representable)."""
    if exponent == 0:
        return tensor
    if abs(exponent) < 1000:
        return tensor * 2.0 ** exponent
    half = exponent // 2
    return tensor * 2.0 ** half * 2.0 ** (exponent - half)


def core_exponent(core: torch.Tensor) -> int:
    """The exponent of the power of two just above ``core``'s largest ``|entry|`` (0 if all zero)."""
    peak = float(core.abs().max())
    return math.frexp(peak)[1] if peak > 0 else 0


def from_work(cores: list[torch.Tensor], exponent: int, dtype: torch.dtype, holder: int) -> list[torch.Tensor]:
    """The float64 cores of ``A / 2**exponent`` as cores of ``A`` in ``dtype``.

    The power goes into core ``holder`` (the one that is not orthonormal) when that core then
    fits ``dtype``'s normal range; otherwise it is spread evenly over all cores, and a TT whose
    cores cannot all fit raises a ``ValueError``.
    """
    info = np.finfo(torch.empty(0, dtype=dtype).numpy().dtype)
    # a core's largest entry must be a normal number (as the input's was): its exponent from low to high;
    # a single core (d = 1) is the input itself, as small as it was
    low, high = info.minexp + 1, info.maxexp - 1
    if len(cores) == 1:
        low = min(low, exponent)

    def fits(core, power):
        return not bool(core.abs().max() > 0) or low <= core_exponent(core) + power <= high

    powers = [0] * len(cores)
    powers[holder] = exponent
    if not fits(cores[holder], exponent):
        d = len(cores)
        powers = [(exponent * (k + 1)) // d - (exponent * k) // d for k in range(d)]
        if not all(fits(c, p) for c, p in zip(cores, powers)):
            raise ValueError(f"the TT cores of this tensor cannot be stored in {dtype}: its scale 2**{exponent} "
                             f"is outside the range of {dtype} even when spread over {d} cores")
    return [times_power_of_two(c, p).to(dtype) if p else c.to(dtype) for c, p in zip(cores, powers)]
