"""Per-layer bases from many safetensors files that do not fit in memory together.

Per layer, the N files are the rows of X (N x D), but only a column chunk X[:, c] (N x |c|) is ever
in memory. Two passes over the files:

    pass 1   G = sum_c (X_c - 1 r_c^T)(X_c - 1 r_c^T)^T        N x N,  r = file 0 (a fixed shift)
             mu = (1/N) sum_i x_i                              (chunk by chunk)
    eigh     G_centered = H G H,  H = I - 1 1^T / N  =  U S^2 U^T
    pass 2   V_c = S_k^-1 U_k^T (X_c - 1 mu_c^T)                k x |c|, written into the components

Shifting every row by one fixed vector r does not change the centered Gram matrix, and r = file 0
removes the large offset the models share, so the float32 products do not cancel. The result is
the same `subspace.Basis` that `fit_basis(X, k)` gives in memory, up to the sign of each direction
(tested: singular values within 1e-4 relative, each component within 1e-3 in 2-norm, for directions
whose singular values are well separated). Memory: the chunk (N x |c|), G, and the k x D components.

Tensors are grouped into layers by name (`zoo.layer_of`: `fc1.weight`, `fc1.bias` -> `fc1`) and a
layer's vector is its tensors flattened in sorted name order, as `zoo.stack_layer` does in memory.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .cli import command
from .subspace import Basis, SubspaceError, _check_k, numerical_rank, save_basis
from .zoo import layer_groups

__all__ = ["list_files", "read_layout", "plan_chunks", "read_chunk", "check_finite", "stream_bases", "extract_bases",
           "extract_to_dir"]


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


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
                    for name in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise SubspaceError(f"{path} is not a readable safetensors file: {exc}") from exc


def read_layout(files: list[Path]) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """{layer: [(tensor name, shape), ...]} shared by every file (headers only), or an error naming
    the first file whose tensor names or shapes differ from the first file's."""
    ref = _header(files[0])
    if not ref:
        raise SubspaceError(f"{files[0]} holds no tensors")
    for path in files[1:]:
        head = _header(path)
        if head.keys() != ref.keys():
            missing, extra = sorted(ref.keys() - head.keys()), sorted(head.keys() - ref.keys())
            raise SubspaceError(f"{path} has different layers than {files[0]}: missing {missing[:5]}, "
                                f"extra {extra[:5]}")
        for name, (shape, _) in ref.items():
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
        rows = shape[0] if shape else 1
        per_row = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
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


def read_chunk(files: list[Path], chunk: list[tuple], dtype=torch.float32, out: torch.Tensor | None = None):
    """X_c (N x |c|): the chunk's columns of every file.

    `out` (N x at least |c|) is filled and its first |c| columns returned: reusing buffers avoids
    fresh page faults for every chunk.
    """
    c0, width = chunk[0][3], chunk[-1][4] - chunk[0][3]
    X = torch.empty(len(files), width, dtype=dtype) if out is None else out[:, :width]
    for i, path in enumerate(files):
        with safe_open(str(path), framework="pt") as f:
            for name, r0, r1, a, b in chunk:
                piece = f.get_slice(name)
                x = piece[r0:r1] if piece.get_shape() else f.get_tensor(name)
                X[i, a - c0:b - c0] = x.reshape(-1)
    return X


def check_finite(files: list[Path], chunk: list[tuple], X: torch.Tensor) -> None:
    """Raise SubspaceError naming the first file whose part of X_c holds a NaN or Inf."""
    c0 = chunk[0][3]
    for i in range(len(files)):
        if not torch.isfinite(X[i]).all():
            kind = "NaN" if torch.isnan(X[i]).any() else "Inf"
            bad = sorted({name for name, _, _, a, b in chunk if not torch.isfinite(X[i, a - c0:b - c0]).all()})
            raise SubspaceError(f"{files[i]} contains {kind} values in {bad}: clean or drop this model first")


def _prefetched(files, chunks, buffers):
    """Yield (chunk, X_c) for each chunk, reading the next one (into the other buffer) meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        read = lambda j: read_chunk(files, chunks[j], buffers[j % 2].dtype, buffers[j % 2])  # noqa: E731
        future = pool.submit(read, 0) if chunks else None
        for j in range(len(chunks)):
            X = future.result()
            if j + 1 < len(chunks):
                future = pool.submit(read, j + 1)
            yield chunks[j], X


# ---------------------------------------------------------------- the two passes

def _layer_basis(files, tensors, k, chunk_elems, buffers, bar, device) -> Basis:
    N, dtype = len(files), buffers[0].dtype
    D = sum(int(torch.tensor(s).prod()) if s else 1 for _, s in tensors)
    chunks = plan_chunks(tensors, chunk_elems)
    G = torch.zeros(N, N, dtype=torch.float64, device=device)
    mean = torch.empty(D, dtype=dtype, device=device)
    ones = torch.full((N,), 1.0 / N, dtype=dtype, device=device)
    for chunk, X in _prefetched(files, chunks, buffers):                     # pass 1
        X = X.to(device)                         # on the CPU: the buffer itself, changed in place
        c0, c1 = chunk[0][3], chunk[-1][4]
        mean[c0:c1] = ones @ X
        X.sub_(X[0].clone())                                                  # shift by file 0
        G_c = X @ X.T
        if not torch.isfinite(G_c.diagonal()).all():                         # a NaN/Inf reaches diag(G)
            check_finite(files, chunk, read_chunk(files, chunk, dtype))
        G += G_c.double()
        bar.update(1)
    H = torch.eye(N, dtype=torch.float64, device=device) - 1.0 / N
    evals, U = torch.linalg.eigh(H @ G @ H)
    evals, U = evals.flip(0).clamp_min(0), U.flip(1)
    S = evals.sqrt()[: min(N - 1, D)]                                      # centered: rank <= N - 1
    rank = numerical_rank(S.cpu(), (N, D))
    _check_k(k, min(N - 1, D), f"{N} files (centered) have at most")
    if k > rank:
        raise SubspaceError(f"k={k} is larger than the rank: the centered stack ({N} x {D}) has numerical rank {rank}")
    W = (U[:, :k] / S[:k]).T.to(dtype)                                        # k x N
    components = torch.empty(k, D, dtype=dtype)
    for chunk, X in _prefetched(files, chunks, buffers):                     # pass 2
        X = X.to(device)
        c0, c1 = chunk[0][3], chunk[-1][4]
        components[:, c0:c1] = (W @ X.sub_(mean[c0:c1])).cpu()
        bar.update(1)
    return Basis(components, mean.cpu(), S.to(dtype).cpu(), True, "streaming")


def stream_bases(files_or_folder, k: int, *, chunk_elems: int | None = None, memory_mb: float = 256,
                 dtype=torch.float32, device=None, progress: bool = True) -> Iterator[tuple[str, Basis]]:
    """Yield (layer, Basis) one layer at a time, in bounded memory.

    k            directions per layer (at most N - 1 for N files)
    chunk_elems  columns per chunk; default: as many as fit `memory_mb` for two chunk buffers (one
                 being computed on, one being read ahead) and the temporaries (3 x N x chunk in all)
    dtype        of the chunk products (float32; the Gram matrix is summed in float64)
    device       where the products run ("cuda" moves each chunk to the GPU); default CPU
    """
    files = list_files(files_or_folder)
    if len(files) < 2:
        raise SubspaceError(f"a centered basis needs at least 2 files, got {len(files)}: {files}")
    layout = read_layout(files)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    chunk_elems = chunk_elems or max(1024, int(memory_mb * 2**20 / (3 * len(files) * itemsize)))
    width = max(c[-1][4] - c[0][3] for t in layout.values() for c in plan_chunks(t, chunk_elems))
    buffers = [torch.empty(len(files), width, dtype=dtype) for _ in range(2)]   # read into one, compute on the other
    n_steps = sum(2 * len(plan_chunks(t, chunk_elems)) for t in layout.values())
    with tqdm(total=n_steps, desc=f"extract {len(files)} files", unit="chunk", disable=not progress) as bar:
        for layer, tensors in layout.items():
            bar.set_postfix_str(layer)
            yield layer, _layer_basis(files, tensors, k, chunk_elems, buffers, bar, torch.device(device or "cpu"))


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
