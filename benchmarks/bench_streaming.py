"""Benchmark: streaming per-layer basis extraction vs a plain read of the same files, and sklearn PCA.

    .venv/bin/python benchmarks/bench_streaming.py                      # 200 files x 10M float32 (8 GB)
    .venv/bin/python benchmarks/bench_streaming.py --files 40 --params 1000000   # a quick run

Writes synthetic model files (a shared mean, a few shared directions, noise) to a temporary folder
under --dir (deleted afterwards), then, each in its own subprocess so peak RSS is its own:

1. warm        the files are in the page cache (just written): a plain read, the extraction, and a
               plain read again
2. cold        the files are evicted from the page cache (posix_fadvise DONTNEED, after a sync)
               before a plain read, and again before the extraction: both read from the disk, as
               they must when the files do not fit in memory together
3. floor       the Gram products alone (N^2 D flops as BLAS syrk), timed on one in-memory chunk
4. sklearn     PCA in memory, per layer, on the largest subset of files within --sklearn-gb, and
               the streaming basis of the same subset compared with it (up to sign)

A plain read is every tensor of every file read once with safetensors (get_tensor + a sum, so every
byte is really read, not just mapped). The extraction is streaming.extract_to_dir: two passes, the
Gram matrix then the components, bases written. Targets (issue 3): extraction peak RSS <= 2 GB and
wall time <= 3x a plain read, each ratio from reads and extractions of the same run and cache state.

Measured 2026-12-05 on the project's shared 2-core VM (24 GB RAM, no GPU), full size, k=16, 1 torch
thread, default 256 MB of chunks:
  cold (from disk): read 6.8 s, extract 14.1 s = 2.07x (other runs 2.3-3.1x: a shared, noisy disk)
  warm (page cache): read 0.6 / 0.4 s, extract 10.3 s = 17x / 25x; the Gram products alone take
      5.8 s (syrk, 70 GFLOP/s), 9.7x the read: on 2 cores the flops, not the reads, set the floor
  peak RSS 639 MB (target 2 GB); 2 torch threads were slower (warm 12.2 s, cold 4.2x)
  sklearn PCA on 50 files (2 GB): 49.4 s, RSS 2915 MB; streaming the same files: 4.1 s, RSS 761 MB;
      singular values within 5e-6 (relative to the top), planted components within 5e-5 of sklearn's
  before this version (safe_open per chunk, torch's general product, 2026-12-04): warm 74.6 s
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
import numpy as np
import torch
from safetensors import safe_open
from shared_subspace import runtime, streaming, subspace, zoo
if args["task"] == "sklearn":
    from sklearn.decomposition import PCA
runtime.set_threads(args.get("threads"))
t0 = time.perf_counter()                      # imports are not timed
out = {}
if args["task"] == "read":
    total = 0
    for f in args["files"]:
        with safe_open(f, framework="pt") as h:
            for name in h.keys():
                t = h.get_tensor(name)
                total += float(t.sum())   # touch every byte: get_tensor may map the file lazily
    out["checksum"] = total
elif args["task"] == "extract":
    streaming.extract_to_dir(args["files"], args["k"], args["out"], memory_mb=args["memory_mb"], progress=False)
elif args["task"] == "sklearn":
    files = args["files"]
    groups = zoo.layer_groups(safe_open(files[0], framework="pt").keys())
    for layer, names in groups.items():
        X = []
        for f in files:
            with safe_open(f, framework="pt") as h:
                X.append(np.concatenate([h.get_tensor(n).numpy().reshape(-1) for n in names]))
        X = np.stack(X)
        pca = PCA(n_components=args["k"], svd_solver="full").fit(X)
        del X
        np.save(f"{args['out']}/{layer}.npy", pca.components_)
        np.save(f"{args['out']}/{layer}.svals.npy", pca.singular_values_)
    out["fit_s"] = time.perf_counter() - t0
elif args["task"] == "gemm":
    # the compute floor: the pass-1 products Y_c Y_c^T alone (as the extraction computes them), on
    # one in-memory chunk, scaled to all of D
    from threadpoolctl import threadpool_limits
    N, D, c = args["n"], args["d"], args["chunk"]
    Y = torch.randn(N, c)
    with threadpool_limits(torch.get_num_threads(), user_api="blas"):
        streaming._gram(Y)
        t1 = time.perf_counter()
        for _ in range(3):
            streaming._gram(Y)
        per = (time.perf_counter() - t1) / 3
    out["gemm_s"] = per * D / c
    out["gflops"] = N * N * c / per / 1e9            # syrk: N^2 c flops (one triangle)
out["wall_s"] = time.perf_counter() - t0
# VmHWM: this process's own peak resident set (ru_maxrss would include the parent's RSS at fork)
out["peak_rss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def child(task: str, **kw) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(dict(task=task, **kw))],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{task} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def evict(files: list[str]) -> None:
    """Drop the files from the page cache, so the next read comes from the disk."""
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_files(folder: Path, n_files: int, params: int, n_layers: int, rank: int, seed: int) -> list[str]:
    """n_files models: per layer x = mu + c @ V + noise (rank shared directions), float32."""
    g = torch.Generator().manual_seed(seed)
    per_layer = params // n_layers
    cols = 1000
    rows = per_layer // cols
    mu = [torch.randn(rows, cols, generator=g) for _ in range(n_layers)]
    V = [torch.randn(rank, rows * cols, generator=g) / 4 for _ in range(n_layers)]
    files = []
    for i in tqdm(range(n_files), desc="write files"):
        tensors = {}
        for j in range(n_layers):
            c = torch.randn(1, rank, generator=g) * torch.linspace(3, 1, rank)
            x = mu[j] + (c @ V[j]).reshape(rows, cols) + 0.5 * torch.randn(rows, cols, generator=g)
            tensors[f"layer{j}.weight"] = x
        path = folder / f"model{i:04d}.safetensors"
        save_file(tensors, str(path))
        files.append(str(path))
    return files


def compare_sklearn(stream_dir: Path, sk_dir: Path, n_planted: int) -> dict:
    """Streaming vs sklearn on the same files: the largest relative difference of the top-k singular
    values, and the largest 2-norm difference (sign aligned) of the planted components. Components
    past the planted rank span near-degenerate noise eigenvalues, where any two solvers may rotate
    them differently; the subspace they span is compared by its largest principal angle instead."""
    import numpy as np
    from shared_subspace.subspace import load_basis, principal_angles

    out = dict(sv_rel=0.0, planted_component=0.0, noise_subspace_angle_deg=0.0)
    for path in sorted(sk_dir.glob("*.svals.npy")):
        layer = path.name[: -len(".svals.npy")]
        ref_v = torch.from_numpy(np.load(sk_dir / f"{layer}.npy")).double()
        ref_s = torch.from_numpy(np.load(path)).double()
        got = load_basis(stream_dir / f"{layer}.safetensors")
        k = ref_v.shape[0]
        s = got.singular_values.double()[:k]
        out["sv_rel"] = max(out["sv_rel"], float(((s - ref_s) / ref_s[0]).abs().max()))
        v = got.components.double()
        sign = torch.sign((ref_v * v).sum(1))
        p = min(n_planted, k)
        out["planted_component"] = max(out["planted_component"],
                                       float((ref_v[:p] - sign[:p, None] * v[:p]).norm(dim=1).max()))
        out["noise_subspace_angle_deg"] = max(out["noise_subspace_angle_deg"],
                                              float(torch.rad2deg(principal_angles(ref_v, v).max())))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--params", type=int, default=10_000_000, help="float32 parameters per file")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rank", type=int, default=8, help="shared directions planted in the files")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--memory-mb", type=float, default=256, help="chunk memory of the extraction")
    p.add_argument("--sklearn-gb", type=float, default=2.0, help="data size of the in-memory sklearn subset")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: runtime.set_threads)")
    p.add_argument("--dir", default="/tmp", help="where the temporary folder goes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    need = args.files * args.params * 4
    free = shutil.disk_usage(args.dir).free
    if free < 1.2 * need:
        print(f"not enough disk in {args.dir}: need {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
        return 1
    root = Path(tempfile.mkdtemp(prefix="bench_streaming_", dir=args.dir))
    results = dict(files=args.files, params_per_file=args.params, data_gb=need / 1e9, k=args.k,
                   memory_mb=args.memory_mb, threads=args.threads)
    try:
        data = root / "models"
        data.mkdir()
        t0 = time.perf_counter()
        files = write_files(data, args.files, args.params, args.layers, args.rank, args.seed)
        results["write_s"] = time.perf_counter() - t0
        common = dict(threads=args.threads)
        extract = lambda name: child("extract", files=files, k=args.k, out=str(root / name),  # noqa: E731
                                     memory_mb=args.memory_mb, **common)
        warm = results["warm"] = dict(read_before=child("read", files=files, **common))
        warm["extract"] = extract("bases_warm")
        warm["read_after"] = child("read", files=files, **common)
        print("warm          ", warm)
        evict(files)
        cold = results["cold"] = dict(read=child("read", files=files, **common))
        evict(files)
        cold["extract"] = extract("bases_cold")
        print("cold          ", cold)
        chunk = max(1024, int(args.memory_mb * 2**20 / (3 * args.files * 4)))
        results["gemm_floor"] = child("gemm", n=args.files, d=args.params, chunk=chunk, **common)
        print("gemm floor    ", results["gemm_floor"])
        reads = [warm["read_before"]["wall_s"], warm["read_after"]["wall_s"]]
        results["ratio_warm"] = [warm["extract"]["wall_s"] / r for r in (max(reads), min(reads))]
        results["ratio_cold"] = cold["extract"]["wall_s"] / cold["read"]["wall_s"]

        n_sk = max(2, min(args.files, int(args.sklearn_gb * 1e9 // (args.params * 4))))
        sk_files = files[:n_sk]
        (root / "sk").mkdir()
        results["sklearn"] = dict(n_files=n_sk, **child("sklearn", files=sk_files, k=min(args.k, n_sk - 1),
                                                        out=str(root / "sk"), **common))
        print("sklearn PCA   ", results["sklearn"])
        results["extract_subset"] = child("extract", files=sk_files, k=min(args.k, n_sk - 1),
                                          out=str(root / "bases_subset"), memory_mb=args.memory_mb, **common)
        print("extract subset", results["extract_subset"])
        results["vs_sklearn"] = compare_sklearn(root / "bases_subset", root / "sk", args.rank)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    warm, cold = results["warm"], results["cold"]
    rss = max(warm["extract"]["peak_rss_mb"], cold["extract"]["peak_rss_mb"])
    print(f"\n{args.files} files x {args.params / 1e6:g}M float32 = {need / 1e9:.2f} GB, k={args.k}, "
          f"threads {args.threads or 'default'}")
    print(f"warm (page cache): read {warm['read_before']['wall_s']:.1f} s before, {warm['read_after']['wall_s']:.1f} s "
          f"after; extract {warm['extract']['wall_s']:.1f} s = {results['ratio_warm'][0]:.1f}x the slower read "
          f"({results['ratio_warm'][1]:.1f}x the faster)")
    print(f"cold (from disk):  read {cold['read']['wall_s']:.1f} s; extract {cold['extract']['wall_s']:.1f} s "
          f"= {results['ratio_cold']:.2f}x")
    print(f"compute floor: the Gram products alone take {results['gemm_floor']['gemm_s']:.1f} s "
          f"({results['gemm_floor']['gflops']:.0f} GFLOP/s) = {results['gemm_floor']['gemm_s'] / max(reads):.1f}x "
          f"the slower warm read")
    print(f"targets: peak RSS {rss:.0f} MB <= 2048: {rss <= 2048};  time <= 3x read: "
          f"cold {results['ratio_cold'] <= 3}, warm {results['ratio_warm'][0] <= 3}")
    sk = results["sklearn"]
    print(f"sklearn PCA on {sk['n_files']} files: {sk['wall_s']:.1f} s, peak RSS {sk['peak_rss_mb']:.0f} MB; "
          f"streaming on the same files {results['extract_subset']['wall_s']:.1f} s, "
          f"peak RSS {results['extract_subset']['peak_rss_mb']:.0f} MB; "
          f"vs sklearn: {results['vs_sklearn']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
