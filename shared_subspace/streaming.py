"""Per-layer bases from many safetensors files that do not fit in memory together.

Per layer, the N files are the rows of X (N x D), but only a column chunk X_c (N x |c|) is ever in
memory, shifted by file 0's chunk: Y_c = X_c - 1 x0_c^T. Two passes over the files:

    pass 1   G = sum_c Y_c Y_c^T                               N x N (float32 products, float64 sum)
    eigh     H G H = U S^2 U^T,   H = I - 1 1^T / N            (= the centered Gram matrix)
    pass 2   [Z; m_c] = [W; 1^T / N] Y_c,   W = S_k^-1 U_k^T   one (k+1) x N product per chunk
             components_c = Z - (W 1) m_c^T,   mean_c = x0_c + m_c

Shifting every row by one fixed vector does not change the centered Gram matrix (H 1 = 0), and
shifting by file 0 removes the large offset the models share, so the float32 products do not
cancel. The result is the same `subspace.Basis` that `fit_basis(X, k)` gives in memory, up to the
sign of each direction (tested: singular values within 1e-4 relative, each component within 1e-3
in 2-norm, for directions whose singular values are well separated). Memory: two chunk buffers
(one computed on while the next is read), G, and the k x D components of one layer.

What makes it fast (measured in benchmarks/bench_streaming.py; 6x faster than reading each chunk
through safetensors' `safe_open` and a general product):
- each piece of a chunk is one `os.preadv` straight into the chunk buffer (files stay open, no
  intermediate tensor), and the headers of all files are read by 16 threads;
- the next chunk is read by a second thread while the BLAS works on this one, and the two after it
  are asked of the disk ahead of time (posix_fadvise WILLNEED), so that disk reads overlap;
- pass 1's product is numpy's `Y @ Y.T`, which BLAS computes as a symmetric rank-k update (syrk:
  one triangle, half the flops of torch's general product);
- pass 2 folds the centering into its one product, and reads the chunks in reverse, so the chunks
  that pass 1 read last, the likeliest to be still in the page cache, are read first.
On a small CPU the Gram products dominate when the files are in the page cache; from a disk, the
reads do.

Tensors are grouped into layers by name (`zoo.layer_of`: `fc1.weight`, `fc1.bias` -> `fc1`) and a
layer's vector is its tensors flattened in sorted name order, as `zoo.stack_layer` does in memory.
"""
from __future__ import annotations

import json
import math
import os
import resource
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .cli import command
from .subspace import Basis, SubspaceError, _check_k, numerical_rank, save_basis
from .zoo import layer_groups

__all__ = ["list_files", "read_layout", "plan_chunks", "read_chunk", "check_finite", "stream_bases", "extract_bases",
           "extract_to_dir"]

AHEAD = 2   # chunks asked of the disk (posix_fadvise WILLNEED) ahead of the one being read

# safetensors dtype names (the format's spec) -> torch dtypes; any of them is converted to the chunk's dtype
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


# ---------------------------------------------------------------- inputs

def list_files(files_or_folder) -> list[Path]:
    """The .safetensors files named, or found (sorted, recursively) in the folders named."""
    items = [files_or_folder] if isinstance(files_or_folder, (str, Path)) else list(files_or_folder)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(item.rglob("*.safetensors"))
            if not found:
                raise SubspaceError(f"no .safetensors files in folder {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise SubspaceError(f"no such file or folder: {item}")
    if not files:
        raise SubspaceError("no files given: pass model or adapter .safetensors files or a folder of them")
    return files


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype, int]]:
    """{tensor name: (shape, dtype, byte offset of its data)}, read and checked from the safetensors
    header: 8 bytes (little-endian header length), the JSON header, then the row-major tensors."""
    def bad(why):
        return SubspaceError(f"{path} is not a readable safetensors file: {why}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, 100 * 2**20):
                raise bad(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(exc) from exc
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or info.get("dtype") not in DTYPES:
            raise bad(f"tensor {name} has dtype {info.get('dtype') if isinstance(info, dict) else info!r}; "
                      f"readable dtypes are {', '.join(DTYPES)}")
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {name} has a malformed entry {info!r} ({exc!r})") from exc
        if end - begin != math.prod(shape) * dtype.itemsize or not 0 <= begin <= end:
            raise bad(f"tensor {name}: bytes {begin}..{end} do not hold shape {shape} of {info['dtype']}")
        if 8 + n + end > size:
            raise bad(f"tensor {name} ends past the end of the file (truncated?)")
        tensors[name] = (shape, dtype, 8 + n + begin)
    return tensors


def read_headers(files: list[Path]) -> list[dict[str, tuple[tuple[int, ...], torch.dtype, int]]]:
    """Every file's `_header`, read by 16 threads (from a disk, the small reads' latencies overlap)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(_header, files))


def read_layout(files: list[Path], headers=None) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """{layer: [(tensor name, shape), ...]} shared by every file (headers only), or an error naming
    the first file whose tensor names or shapes differ from the first file's."""
    headers = headers or read_headers(files)
    ref = headers[0]
    if not ref:
        raise SubspaceError(f"{files[0]} holds no tensors")
    for path, head in zip(files[1:], headers[1:]):
        if head.keys() != ref.keys():
            missing, extra = sorted(ref.keys() - head.keys()), sorted(head.keys() - ref.keys())
            raise SubspaceError(f"{path} has different layers than {files[0]}: missing {missing[:5]}, "
                                f"extra {extra[:5]}")
        for name, (shape, _, _) in ref.items():
            if head[name][0] != shape:
                raise SubspaceError(f"{path}: tensor {name} has shape {head[name][0]}, "
                                    f"but {files[0]} has {shape}")
    return {layer: [(n, ref[n][0]) for n in names] for layer, names in layer_groups(ref).items()}


def plan_chunks(tensors: list[tuple[str, tuple[int, ...]]], chunk_elems: int) -> list[list[tuple]]:
    """Split a layer's flattened vector into column chunks of about `chunk_elems` entries.

    A chunk is a list of pieces (tensor name, row0, row1, col0, col1): rows row0:row1 of the tensor
    (its first axis, so each piece is contiguous on disk) sit at columns col0:col1 of the layer.
    """
    chunks, current, size, col = [], [], 0, 0
    for name, shape in tensors:
        rows, per_row = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
        if rows * per_row == 0:                                   # an empty tensor adds no columns
            continue
        step = max(1, chunk_elems // per_row)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            n = (r1 - r0) * per_row
            if current and size + n > chunk_elems:
                chunks.append(current)
                current, size = [], 0
            current.append((name, r0, r1, col, col + n))
            size, col = size + n, col + n
    if current:
        chunks.append(current)
    return chunks


class Reader:
    """The N files of one extraction, kept open: `read_row` reads file i's part of a chunk with one
    `os.preadv` per piece, straight into the chunk buffer (through a small staging tensor only when
    the file's dtype is not the buffer's)."""

    def __init__(self, files: list[Path], headers=None):
        self.files = files
        self.headers = headers or read_headers(files)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if len(files) + 64 > soft and (hard == resource.RLIM_INFINITY or hard >= len(files) + 64):
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(files) + 64, hard))
            soft = len(files) + 64
        # more files than the process may open at once: open each one for each read instead
        self.fds = [os.open(p, os.O_RDONLY) for p in files] if len(files) + 64 <= soft else None

    def close(self) -> None:
        for fd in self.fds or []:
            os.close(fd)
        self.fds = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def pieces(self, i: int, chunk: list[tuple]) -> Iterator[tuple[str, torch.dtype, int, int, int]]:
        """(tensor name, dtype, byte offset, first column, last column) of each piece of file i."""
        for name, r0, r1, a, b in chunk:
            _, dtype, start = self.headers[i][name]
            yield name, dtype, start + r0 * ((b - a) // (r1 - r0)) * dtype.itemsize, a, b

    def advise(self, chunk: list[tuple]) -> None:
        """Ask the kernel to start reading the chunk's bytes of every file now (posix_fadvise
        WILLNEED: asynchronous), so that from a disk the reads of many files overlap each other
        and the computation."""
        for i, fd in enumerate(self.fds or []):
            for _, dtype, offset, a, b in self.pieces(i, chunk):
                os.posix_fadvise(fd, offset, (b - a) * dtype.itemsize, os.POSIX_FADV_WILLNEED)

    def read_row(self, i: int, chunk: list[tuple], row: torch.Tensor) -> None:
        """row[:] = file i's entries at the chunk's columns (row: 1-D, contiguous, |c| long)."""
        fd = self.fds[i] if self.fds is not None else os.open(self.files[i], os.O_RDONLY)
        try:
            c0 = chunk[0][3]
            for name, dtype, offset, a, b in self.pieces(i, chunk):
                dst = row[a - c0:b - c0]
                buf = dst if dtype == row.dtype else torch.empty(b - a, dtype=dtype)
                view, done = memoryview(buf.view(torch.uint8).numpy()), 0
                while done < len(view):
                    got = os.preadv(fd, [view[done:]], offset + done)
                    if got == 0:
                        raise SubspaceError(f"{self.files[i]} is truncated: tensor {name} ends past the end "
                                            "of the file")
                    done += got
                if buf is not dst:
                    dst.copy_(buf)
        finally:
            if self.fds is None:
                os.close(fd)


def chunk_width(chunk: list[tuple]) -> int:
    return chunk[-1][4] - chunk[0][3]


def read_chunk(files: list[Path], chunk: list[tuple], dtype=torch.float32) -> torch.Tensor:
    """X_c (N x |c|): the chunk's columns of every file."""
    X = torch.empty(len(files), chunk_width(chunk), dtype=dtype)
    with Reader(files) as reader:
        for i in range(len(files)):
            reader.read_row(i, chunk, X[i])
    return X


def check_finite(files: list[Path], chunk: list[tuple], X: torch.Tensor) -> None:
    """Raise SubspaceError naming the first file whose part of X_c holds a NaN or Inf."""
    c0 = chunk[0][3]
    for i in range(len(files)):
        if not torch.isfinite(X[i]).all():
            kind = "NaN" if torch.isnan(X[i]).any() else "Inf"
            bad = sorted({name for name, _, _, a, b in chunk if not torch.isfinite(X[i, a - c0:b - c0]).all()})
            raise SubspaceError(f"{files[i]} contains {kind} values in {bad}: clean or drop this model first")


def _read_shifted(reader: Reader, chunk: list[tuple], buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y_c, x0_c): the chunk read into `buffer` (as a contiguous N x |c| view), every row minus
    file 0's, and file 0's row. Each row is shifted right after it is read, while it is in cache."""
    N, width = len(reader.files), chunk_width(chunk)
    Y = buffer[: N * width].view(N, width)
    reader.read_row(0, chunk, Y[0])
    x0 = Y[0].clone()
    Y[0].zero_()
    for i in range(1, N):
        reader.read_row(i, chunk, Y[i])
        Y[i].sub_(x0)
    return Y, x0


def _prefetched(reader, chunks, buffers) -> Iterator[tuple[list[tuple], torch.Tensor, torch.Tensor]]:
    """Yield (chunk, Y_c, x0_c) for each chunk, reading the next one into the other buffer meanwhile
    (file reads and torch's elementwise ops release the GIL, so the two threads overlap)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        read = lambda j: _read_shifted(reader, chunks[j], buffers[j % 2])  # noqa: E731
        future = pool.submit(read, 0) if chunks else None
        for j in range(len(chunks)):
            for ahead in chunks[j + 1:j + 1 + AHEAD] if j == 0 else chunks[j + AHEAD:j + AHEAD + 1]:
                reader.advise(ahead)             # the next chunks come in from the disk meanwhile
            Y, x0 = future.result()
            if j + 1 < len(chunks):
                future = pool.submit(read, j + 1)
            yield chunks[j], Y, x0


def _gram(Y: torch.Tensor) -> torch.Tensor:
    """Y Y^T in float64. On the CPU numpy's `A @ A.T` calls BLAS syrk (only one triangle: half
    the flops of torch's general product); on a GPU torch's product."""
    if Y.device.type == "cpu":
        Yn = Y.numpy()
        return torch.from_numpy(Yn @ Yn.T).double()
    return (Y @ Y.T).double()


# ---------------------------------------------------------------- the two passes

def _layer_basis(reader, chunks, k, buffers, bar, device) -> Basis:
    files, N, D, dtype = reader.files, len(reader.files), chunks[-1][-1][4], buffers[0].dtype
    _check_k(k, min(N - 1, D), f"{N} files (centered) have at most")
    G = torch.zeros(N, N, dtype=torch.float64, device=device)
    for chunk, Y, _ in _prefetched(reader, chunks, buffers):                 # pass 1
        G_c = _gram(Y.to(device))
        if not torch.isfinite(G_c.diagonal()).all():                         # a NaN/Inf reaches diag(G)
            check_finite(files, chunk, read_chunk(files, chunk, dtype))
        G += G_c
        bar.update(1)
    H = torch.eye(N, dtype=torch.float64, device=device) - 1.0 / N
    evals, U = torch.linalg.eigh(H @ G @ H)
    evals, U = evals.flip(0).clamp_min(0), U.flip(1)
    S = evals.sqrt()[: min(N - 1, D)]                                      # centered: rank <= N - 1
    rank = numerical_rank(S.cpu(), (N, D))
    if k > rank:
        raise SubspaceError(f"k={k} is larger than the rank: the centered stack ({N} x {D}) has numerical rank {rank}")
    W = (U[:, :k] / S[:k]).T                                                  # k x N
    W1 = W.sum(1, keepdim=True).to(dtype)                                    # W 1 (~0: U is orthogonal to 1)
    Wm = torch.cat([W, torch.full((1, N), 1.0 / N, dtype=W.dtype, device=device)]).to(dtype)
    components, mean = torch.empty(k, D, dtype=dtype), torch.empty(D, dtype=dtype)
    for chunk, Y, x0 in _prefetched(reader, chunks[::-1], buffers):          # pass 2, last chunk first
        c0, c1 = chunk[0][3], chunk[-1][4]
        Z = Wm @ Y.to(device)                                                 # [W Y_c; m_c]
        components[:, c0:c1] = (Z[:k] - W1 * Z[k]).cpu()
        mean[c0:c1] = x0 + Z[k].cpu()
        bar.update(1)
    return Basis(components, mean, S.to(dtype).cpu(), True, "streaming")


def stream_bases(files_or_folder, k: int, *, chunk_elems: int | None = None, memory_mb: float = 256,
                 dtype=torch.float32, device=None, threads: int | None = None,
                 progress: bool = True) -> Iterator[tuple[str, Basis]]:
    """Yield (layer, Basis) one layer at a time, in bounded memory (layers of empty tensors are skipped).

    k            directions per layer (at most N - 1 for N files)
    chunk_elems  columns per chunk; default: as many as fit `memory_mb` for two chunk buffers (one
                 being computed on, one being read ahead) and the products (3 x N x chunk in all)
    dtype        of the chunk products (float32; the Gram matrix is summed in float64)
    device       where the products run ("cuda" moves each chunk to the GPU); default CPU
    threads      BLAS threads for the products (default: torch's thread count, see runtime.set_threads)
    """
    files = list_files(files_or_folder)
    if len(files) < 2:
        raise SubspaceError(f"a centered basis needs at least 2 files, got {len(files)}: {files}")
    headers = read_headers(files)
    layout = read_layout(files, headers)
    chunk_elems = chunk_elems or max(1024, int(memory_mb * 2**20 / (3 * len(files) * dtype.itemsize)))
    plans = {layer: plan_chunks(t, chunk_elems) for layer, t in layout.items()}
    plans = {layer: chunks for layer, chunks in plans.items() if chunks}      # layers of empty tensors: no basis
    width = max(chunk_width(c) for chunks in plans.values() for c in chunks)
    buffers = [torch.empty(len(files) * width, dtype=dtype) for _ in range(2)]   # read into one, compute on the other
    n_steps = sum(2 * len(chunks) for chunks in plans.values())
    with (Reader(files, headers) as reader, threadpool_limits(threads or torch.get_num_threads(), user_api="blas"),
          tqdm(total=n_steps, desc=f"extract {len(files)} files", unit="chunk", disable=not progress) as bar):
        for layer, chunks in plans.items():
            bar.set_postfix_str(layer)
            yield layer, _layer_basis(reader, chunks, k, buffers, bar, torch.device(device or "cpu"))


def extract_bases(files_or_folder, k: int, **kwargs) -> dict[str, Basis]:
    """{layer: Basis} for every layer (all bases held in memory: k x D each)."""
    return dict(stream_bases(files_or_folder, k, **kwargs))


def extract_to_dir(files_or_folder, k: int, out, **kwargs) -> dict[str, Path]:
    """Write each layer's basis to `out/<layer>.safetensors` (subspace.save_basis) as soon as it is
    computed, so only one layer's components are ever in memory. Returns {layer: path}."""
    out = Path(out)
    files = list_files(files_or_folder)
    paths = {}
    for layer, basis in stream_bases(files, k, **kwargs):
        paths[layer] = save_basis(basis, out / f"{layer}.safetensors", layer=layer, n_files=len(files),
                                  files=[str(f) for f in files[:1000]])
        del basis
    return paths


# ---------------------------------------------------------------- command line

def run(args) -> int:
    paths = extract_to_dir(args.files, args.k, args.out, memory_mb=args.memory_mb, device=args.device,
                           progress=not args.quiet)
    for layer, path in paths.items():
        print(f"{layer}: {path}")
    return 0


run.add_arguments = lambda p: (
    p.add_argument("files", nargs="+", help="safetensors files, or folders searched for *.safetensors"),
    p.add_argument("--k", type=int, required=True, help="directions per layer"),
    p.add_argument("--out", required=True, help="folder for <layer>.safetensors bases"),
    p.add_argument("--memory-mb", type=float, default=256, help="memory for column chunks (default 256)"),
    p.add_argument("--device", default=None, help="run the products on this device, e.g. cuda (default cpu)"),
    p.add_argument("--quiet", action="store_true", help="no progress bar"))
command("extract", "per-layer bases from many safetensors files in bounded memory (two streaming passes)")(run)
