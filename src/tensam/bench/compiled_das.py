"""Timing references for DAS's fixed cost on small models (``bench_optim`` rows ``das-wrapper``
and ``das-compiled``); neither is a method a config should train with.

* :class:`WrapperOnlyDAS`: DAS's wrapper around the base optimizer with no scaling at all, so
  its ratio to the base is what the step contract itself costs.
* :class:`CompiledDAS`: DAS (Algorithm 2, line 5, and the compensated update of
  :class:`~tensam.optim.base.ScalingOptimizer`) with everything but the order-sensitive
  reductions moved into two C functions, compiled at run time with the system's C compiler
  and called through ``ctypes``: ``das_pre`` computes lambda_k and adds lambda_k G_k^(t) to the
  residual before the base step, ``das_post`` does the Kahan update after it. The squared norms,
  the layer sums and the square root stay torch's own calls, because torch's kernels round
  differently from a plain C loop (its float32 ``sqrt`` is not correctly rounded on every CPU),
  and ``addcmul`` is a fused multiply-add. So the step is bit-identical to :class:`DAS`
  (``tests/test_compiled_das.py``), the floor of any bit-identical DAS step that keeps torch's
  norms.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tensam.errors import ConfigError
from tensam.norms import FlatCoreIndex
from tensam.optim import DAS
from tensam.optim.schedules import scheduled

C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <float.h>

/* lambda_k = ((||g_k||^2 - gbar_l) * eta_k alpha) / max(root_k ||G_k||^2, FLT_MIN), 0 where
   ||G_k||^2 <= eps; then residual_k <- fma(G_k, lambda_k, residual_k) (torch's addcmul_). */
void das_pre(int64_t n, const float *sq_cores, const float *sq_grads,
             const float *layer_total, const int64_t *layer,
             const float *inv_K, const float *coef, const float *root, int64_t root_stride,
             float eps, float *lam, float *const *cores, float *const *res,
             const int64_t *numel) {
  for (int64_t i = 0; i < n; ++i) {
    float sq_core = sq_cores[i], sq_grad = sq_grads[i];
    float gbar = layer_total[layer[i]] * inv_K[i];
    float denom = root[i * root_stride] * sq_core;
    if (denom < FLT_MIN) denom = FLT_MIN;
    float l = ((sq_grad - gbar) * coef[i]) / denom;
    if (sq_core <= eps) l = 0.0f;
    lam[i] = l;
    const float *c = cores[i];
    float *r = res[i];
    for (int64_t j = 0; j < numel[i]; ++j) r[j] = fmaf(c[j], l, r[j]);
  }
}

/* Kahan: G <- G + residual, rounded; residual <- residual + (G_old - G_new). */
void das_post(int64_t n, float *const *cores, float *const *res, const int64_t *numel) {
  for (int64_t i = 0; i < n; ++i) {
    float *c = cores[i], *r = res[i];
    for (int64_t j = 0; j < numel[i]; ++j) {
      float g = c[j], t = g + r[j];
      c[j] = t;
      r[j] = r[j] + (g - t);
    }
  }
}
"""

#: no contraction of a * b + c into an FMA the torch ops do not make; no fast-math
CFLAGS = ("-O2", "-march=native", "-ffp-contract=off", "-shared", "-fPIC")


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``; None when there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


@functools.cache
def kernels() -> ctypes.CDLL:
    """The compiled C functions (built once per source and flags, in the temp directory)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("CompiledDAS needs a C compiler: none at $CC or cc")
    key = hashlib.sha256((C_SOURCE + " ".join(CFLAGS)).encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"tensam_das_{key}.so"
    if not out.exists():
        src = out.with_suffix(".c")
        src.write_text(C_SOURCE)
        partial = out.with_suffix(f".{os.getpid()}.so")
        done = subprocess.run([cc, *CFLAGS, str(src), "-o", str(partial), "-lm"],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"compiling the DAS kernels failed:\n{done.stderr}")
        partial.replace(out)  # atomic: a concurrent process sees the whole library or none
    lib = ctypes.CDLL(str(out))
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.das_pre.argtypes = [i, p, p, p, p, p, p, p, i, ctypes.c_float, p, p, p, p]
    lib.das_post.argtypes = [i, p, p, p]
    return lib


class WrapperOnlyDAS(DAS):
    """DAS's wrapper with no scaling: the base step through the step contract."""

    @torch.no_grad()
    def update(self) -> None:
        self.base.step()


class CompiledDAS(DAS):
    """:class:`DAS` with lambda and the compensated update in two compiled calls; float32 cores
    on the CPU, ``compensated=True`` and ``flatten=False`` only (the default DAS)."""

    @functools.wraps(DAS.__init__, assigned=())  # DAS's signature, for the configs' ${sig:}
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bad = next((f"cores of {g.name!r} ({c.dtype}, {c.device}, contiguous="
                    f"{c.is_contiguous()})" for g in self.index.groups for c in g.cores
                    if c.device.type != "cpu" or c.dtype != torch.float32
                    or not c.is_contiguous()), None)
        if not self.compensated:
            bad = "compensated=false"
        if isinstance(self.index, FlatCoreIndex):
            bad = "flatten=true"
        if bad:
            raise ConfigError(f"CompiledDAS needs contiguous float32 CPU cores, "
                              f"compensated=true and flatten=false; got {bad}")
        self._lib = kernels()
        self._pointers_of = None

    def _pointers(self) -> None:
        """The cores' and residuals' data pointers, rebuilt whenever the layout was."""
        idx, n = self.index, len(self.index)
        residual = [self.state[c]["residual"] for c in idx.cores]
        self._cores_p = (ctypes.c_void_p * n)(*[c.data_ptr() for c in idx.cores])
        self._res_p = (ctypes.c_void_p * n)(*[r.data_ptr() for r in residual])
        self._numel = torch.tensor([c.numel() for c in idx.cores], dtype=torch.int64)
        self._inv_K = idx.inv_K_as(torch.float32)
        self._pointers_of = self._layout

    @torch.no_grad()
    def update(self) -> None:
        idx, n = self.index, len(self.index)
        if not n:
            return self.base.step()
        self._check_layout()
        if self._pointers_of is not self._layout:
            self._pointers()
        sq_core, sq_grad = idx.sq_norms()
        layer_total = idx.layer_sum(sq_grad)
        root = (layer_total.index_select(0, idx.layer) if self.normalization == "layer"
                else sq_grad.sum()).sqrt()  # u^(-1), per core or global, torch's sqrt
        alpha = scheduled(self.alpha, self.alpha_schedule, self.steps, self.total_steps)
        coef = self.scaled_learning_rates(alpha, torch.float32)
        lam = torch.empty(n)
        self._lib.das_pre(n, sq_core.data_ptr(), sq_grad.data_ptr(), layer_total.data_ptr(),
                          idx.layer.data_ptr(),
                          self._inv_K.data_ptr(), coef.data_ptr(), root.data_ptr(),
                          int(root.dim() > 0), self.eps, lam.data_ptr(), self._cores_p,
                          self._res_p, self._numel.data_ptr())
        self._last_lambda = lam
        self.base.step()
        self._lib.das_post(n, self._cores_p, self._res_p, self._numel.data_ptr())
