"""ttlayers' TT-SVD against two independent TT libraries, teneva and torchtt (the ``peers`` extra),
and tensorly, side by side in one run: errors, ranks and times, and the table of
docs/decompositions.md.

Cases, each in float32 and float64: a random Gaussian tensor, an exact low-rank TT tensor, a
smooth function on a 10^6 grid, a TT tensor whose bond spectra decay geometrically to 1e-12, and
a 1024 x 1024 weight with singular values decaying to 1e-6 as a TT-matrix. Each is decomposed with
a rank cap (every library gets the same cap) and with ``rel_eps`` (teneva and torchtt get the same
relative bound, tensorly, which has none, the ranks ours chose). Errors are relative Frobenius
errors of the returned cores multiplied out in float64. Checks written to the results: at
``rel_eps``, ours within the bound and its largest rank no larger than that of the best peer
within the bound; at ``max_rank``, ours minus the best peer's error, against the round-off
allowance of tests/ttlayers/test_precision.py.

Times: the best of ``--repeats`` interleaved batches (each at least 50 ms of CPU) of process CPU
time, one thread by default (the machine this runs on is shared: wall time there mostly measures
the scheduler).

    python -m benchmarks.bench_decompositions [--repeats 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import tensor_train

from benchmarks.report import markdown_table, update_doc, write_results
from ttlayers import tt_matrix_svd, tt_svd
from ttlayers._precision import roundoff, storage_roundoff

NAME = "bench_decompositions"
SEED = 0


def _peers():
    """``(teneva, torchtt)`` modules (the ``peers`` extra)."""
    import teneva
    with warnings.catch_warnings():  # torchtt warns that its C++ extension is not built
        warnings.simplefilter("ignore")
        import torchtt
    return teneva, torchtt


def cases(quick: bool):
    """(name, data as float64 numpy, (row_shape, col_shape) for a TT-matrix case or None)."""
    rng = np.random.default_rng(SEED)
    n = 6 if quick else 10
    yield f"random 12^{4 if quick else 5}", rng.standard_normal((12,) * (4 if quick else 5)), None
    ranks = [1, 6, 6, 6, 6, 1]
    cores = [rng.standard_normal((ranks[k], n, ranks[k + 1])) for k in range(5)]
    full = cores[0].reshape(n, -1)
    for core in cores[1:]:
        full = (full @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    yield f"low-rank TT {n}^5, ranks 6", full.reshape((n,) * 5), None
    grid = np.meshgrid(*[np.linspace(0, 1, n)] * 6, indexing="ij")
    yield f"smooth 1/(1+x1+...+x6) on {n}^6", 1.0 / (1.0 + sum(grid)), None
    shape, rank, out = (8,) * 6, 1, np.ones((1, 1))
    for k in range(6):
        r_next = 1 if k == 5 else min(12, rank * 8)
        core = np.linalg.qr(rng.standard_normal((rank * 8, r_next)))[0] if k < 5 else rng.standard_normal((rank * 8, 1))
        if k < 5:
            core = core * np.logspace(0, -12, r_next)
        out, rank = (out @ core.reshape(rank, -1)).reshape(-1, r_next), r_next
    yield "decaying TT 8^6, spectra 1..1e-12", out.reshape(shape), None
    size = 256 if quick else 1024
    u = np.linalg.qr(rng.standard_normal((size, size)))[0]
    v = np.linalg.qr(rng.standard_normal((size, size)))[0]
    rows, cols = ((16, 4, 4), (4, 4, 16)) if quick else ((16, 8, 8), (8, 8, 16))
    yield f"weight {size}x{size}, spectrum 1..1e-6, TT-matrix", (u * np.logspace(0, -6, size)) @ v.T, (rows, cols)


def tensorised(matrix, rows, cols):
    d = len(rows)
    t = matrix.reshape(*rows, *cols).transpose([a for k in range(d) for a in (k, d + k)])
    return t.reshape([m * n for m, n in zip(rows, cols)])


def cores_of(result) -> list[np.ndarray]:
    """3-way float64 numpy cores of any library's result."""
    factors = result.cores if hasattr(result, "cores") and not isinstance(result, list) else (
        result if isinstance(result, list) else result.factors)
    out = []
    for f in factors:
        f = np.asarray(f.cpu() if torch.is_tensor(f) else f, dtype=np.float64)
        out.append(f.reshape(f.shape[0], -1, f.shape[-1]))
    return out


def rel_error(cores, tensor) -> float:
    full = cores[0].reshape(-1, cores[0].shape[-1])
    for c in cores[1:]:
        full = (full @ c.reshape(c.shape[0], -1)).reshape(-1, c.shape[-1])
    return float(np.linalg.norm(full.reshape(tensor.shape) - tensor) / np.linalg.norm(tensor))


def runners(data: np.ndarray, matrix_shapes, setting: dict, our_ranks=None):
    """``{library: zero-argument decomposition}`` on ``data`` (float32/64 numpy)."""
    teneva, torchtt = _peers()
    tensor = tensorised(data, *matrix_shapes) if matrix_shapes else data
    torch_tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    cap, rel_eps = setting.get("max_rank"), setting.get("rel_eps")
    d = tensor.ndim
    e = 0.0 if rel_eps is None else rel_eps * float(np.linalg.norm(tensor.astype(np.float64))) / math.sqrt(d - 1)

    def ours():
        if matrix_shapes:
            return tt_matrix_svd(torch.from_numpy(data), *matrix_shapes, **setting)
        return tt_svd(torch_tensor, **setting)

    def torchtt_():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torchtt.TT(torch_tensor, eps=0.0 if rel_eps is None else rel_eps,
                              rmax=cap if cap is not None else 10 ** 9)

    def tensorly_():
        with tl.backend_context("pytorch"):
            return tensor_train(torch_tensor, rank=cap if our_ranks is None else list(our_ranks))

    out = {"ours": ours, "teneva": lambda: teneva.svd(tensor, e=e, r=cap if cap is not None else 10 ** 12),
           "torchtt": torchtt_}
    if our_ranks is not None or cap is not None:
        out["tensorly"] = tensorly_
    return out, tensor


def timed(fn, min_cpu: float = 0.05):
    """(CPU seconds per call, result) of one batch of calls lasting at least ``min_cpu``."""
    calls, cpu = 0, time.process_time()
    while True:
        result = fn()
        calls += 1
        if time.process_time() - cpu >= min_cpu:
            return (time.process_time() - cpu) / calls, result


def allowance(dtype, shape) -> float:
    """Round-off allowance of tests/ttlayers/test_precision.py."""
    torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
    d = len(shape)
    return math.sqrt(d - 1) * roundoff(torch_dtype, math.prod(shape)) + 2 * storage_roundoff(torch_dtype, d)


def run(repeats: int, quick: bool) -> list[dict]:
    rows = []
    for name, data64, matrix_shapes in cases(quick):
        settings = [{"max_rank": 8}, {"rel_eps": 0.5 if name.startswith("random") else 1e-4}]
        for dtype in (np.float32, np.float64):
            data = data64.astype(dtype)
            for setting in settings:
                fns, tensor = runners(data, matrix_shapes, setting)
                our_ranks = fns["ours"]().rank if "rel_eps" in setting else None
                fns, tensor = runners(data, matrix_shapes, setting, our_ranks)
                best, results = {k: math.inf for k in fns}, {}
                for _ in range(repeats):  # interleaved, so load changes hit all alike
                    for who, fn in fns.items():
                        cpu, results[who] = timed(fn)
                        best[who] = min(best[who], cpu)
                reference = tensor.astype(np.float64)
                cores = {who: cores_of(r) for who, r in results.items()}
                err = {who: rel_error(c, reference) for who, c in cores.items()}
                top = {who: max(c.shape[-1] for c in cs[:-1]) for who, cs in cores.items()}
                row = {"case": name, "dtype": np.dtype(dtype).name,
                       "setting": ", ".join(f"{k}={v}" for k, v in setting.items()),
                       "ours_ranks": "-".join(str(c.shape[-1]) for c in cores["ours"][:-1])}
                for who in ("ours", "teneva", "torchtt", "tensorly"):
                    row[f"{who}_max_rank"] = top.get(who)
                    row[f"{who}_err"] = err.get(who)
                    row[f"{who}_cpu_s"] = best.get(who)
                peers = ("teneva", "torchtt")
                if "rel_eps" in setting:
                    within = [p for p in peers if err[p] <= setting["rel_eps"]]
                    row["ok"] = bool(err["ours"] <= setting["rel_eps"]
                                     and all(top["ours"] <= top[p] for p in within))
                    row["check"] = (f"err <= {setting['rel_eps']:g}; max rank {top['ours']} vs peers within bound "
                                    f"{[top[p] for p in within]}")
                else:
                    excess = {p: err["ours"] - err[p] for p in peers}
                    row["ok"] = bool(max(excess.values()) <= allowance(dtype, tensor.shape))
                    row["check"] = (", ".join(f"err - {p}'s = {x:.1e}" for p, x in excess.items())
                                    + f" (allowance {allowance(dtype, tensor.shape):.1e})")
                rows.append(row)
                print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smaller cases, results not written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    rows = run(args.repeats, args.quick)
    failed = [f"{r['case']} {r['dtype']} {r['setting']}" for r in rows if not r["ok"]]
    print(f"checks failed: {failed or 'none'}")
    if args.quick:
        return
    teneva, torchtt = _peers()
    config = {"repeats": args.repeats, "threads": args.threads, "device": "cpu",
              "teneva": teneva.__version__, "torchtt": getattr(torchtt, "__version__", "0.5.0"),
              "tensorly": tl.__version__, "tensorly_backend": "pytorch"}
    write_results(NAME, rows, config, SEED)
    columns = ["case", "dtype", "setting", "ours_ranks", "ours_err", "teneva_err", "torchtt_err", "tensorly_err",
               "teneva_max_rank", "torchtt_max_rank", "ours_cpu_s", "teneva_cpu_s", "torchtt_cpu_s",
               "tensorly_cpu_s", "ok", "check"]
    fmt = {c: ".2e" for c in columns if c.endswith("_err")} | {c: ".4f" for c in columns if c.endswith("_cpu_s")}
    table = markdown_table(rows, columns, fmt)
    ratios = [r["ours_cpu_s"] / min(r["teneva_cpu_s"], r["torchtt_cpu_s"]) for r in rows]
    update_doc("docs/decompositions.md", NAME,
               f"{table}\n\nChecks failed: {', '.join(failed) or 'none'}. CPU time of ours over the faster peer's: "
               f"{min(ratios):.2f} to {max(ratios):.2f}. {args.threads} thread(s), best of {args.repeats} interleaved "
               f"batches; generated by `python -m benchmarks.bench_decompositions`.")


if __name__ == "__main__":
    main()
