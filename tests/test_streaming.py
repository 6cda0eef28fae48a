"""Streaming extraction: same basis as the in-memory fit, bounded chunks, clear errors naming files."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file

from shared_subspace import cli, streaming, subspace, zoo

SHAPES = {"enc.weight": (6, 10), "enc.bias": (6,), "head.weight": (3, 6), "head.lora_A": (4, 5)}


def write_models(folder, n=12, seed=0, shapes=SHAPES):
    """n models: a large shared offset + 3 shared directions with distinct scales + small noise."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = {k: 5 + torch.randn(s, generator=g) for k, s in shapes.items()}
    dirs = {k: torch.randn(3, *s, generator=g) for k, s in shapes.items()}
    paths = []
    for i in range(n):
        c = torch.randn(3, generator=g) * torch.tensor([4.0, 2.0, 1.0])
        state = {k: base[k] + torch.einsum("j,j...->...", c, dirs[k]) + 0.01 * torch.randn(s, generator=g)
                 for k, s in shapes.items()}
        paths.append(folder / f"m{i:02d}.safetensors")
        save_file(state, str(paths[-1]))
    return paths


def assert_same_basis(got, ref, k):
    """Tolerance (stated in the module docstring): singular values 1e-4 relative, components 1e-3
    in 2-norm up to sign, mean 1e-5 relative; the planted directions are well separated."""
    s_ref = ref.singular_values.double()
    assert got.singular_values.shape == ref.singular_values.shape
    assert torch.allclose(got.singular_values.double()[:k], s_ref[:k], rtol=1e-4, atol=1e-6 * s_ref[0])
    sign = torch.sign((got.components.double() * ref.components.double()).sum(1))
    assert (got.components.double() * sign[:, None] - ref.components.double()).norm(dim=1).max() < 1e-3
    assert torch.allclose(got.mean.double(), ref.mean.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_elems", [None, 7, 64])
def test_matches_in_memory_fit(tmp_path, chunk_elems):
    paths = write_models(tmp_path / "models")
    states = [load_file(str(p)) for p in paths]
    bases = streaming.extract_bases(tmp_path / "models", 3, chunk_elems=chunk_elems, progress=False)
    assert list(bases) == ["enc", "head"]
    for layer, basis in bases.items():
        ref = subspace.fit_basis(zoo.stack_layer(states, layer).double(), 3)
        assert basis.k == 3 and basis.dim == ref.dim
        assert_same_basis(basis, ref, 3)


def test_matches_on_a_real_zoo(tmp_path):
    cfg = zoo.ZooConfig(seen_transforms=("identity", "rotate90"), unseen_transforms=(), labelmaps=1, subsets=0,
                        seeds=3, heldout_seeds=0, pretrain_epochs=2, finetune_epochs=2)
    folder = zoo.build_zoo("finetuned", cfg, root=tmp_path, progress=False)
    entries, states = zoo.load_members(folder, "fit")
    files = [folder / e["file"] for e in entries]
    bases = streaming.extract_bases(files, 4, progress=False)
    for layer in ["fc1", "fc2", "fc3"]:
        assert_same_basis(bases[layer], subspace.fit_basis(zoo.stack_layer(states, layer).double(), 4), 4)


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 9), min_size=0, max_size=3), min_size=1, max_size=4),
       chunk=st.integers(1, 50))
def test_chunks_tile_the_layer(shapes, chunk):
    tensors = [(f"t{i}", tuple(s)) for i, s in enumerate(shapes)]
    chunks = streaming.plan_chunks(tensors, chunk)
    pieces = [p for c in chunks for p in c]
    D = sum(int(torch.tensor(s).prod()) if s else 1 for _, s in tensors)
    assert pieces[0][3] == 0 and pieces[-1][4] == D
    assert all(a[4] == b[3] for a, b in zip(pieces, pieces[1:]))        # contiguous, in order
    for c in chunks:                                                    # within budget unless one row is bigger
        assert c[-1][4] - c[0][3] <= chunk or len(c) == 1


def test_extract_to_dir_and_cli(tmp_path, capsys):
    write_models(tmp_path / "models")
    assert cli.main(["extract", str(tmp_path / "models"), "--k", "2", "--out", str(tmp_path / "bases"), "--quiet"]) == 0
    basis, info = subspace.load_basis(tmp_path / "bases" / "enc.safetensors", with_info=True)
    assert basis.k == 2 and basis.dim == 6 * 10 + 6 and info["layer"] == "enc" and info["n_files"] == 12
    assert "head:" in capsys.readouterr().out


def test_error_different_layer_names(tmp_path):
    paths = write_models(tmp_path / "models", n=4)
    save_file({"enc.weight": torch.zeros(6, 10)}, str(paths[2]))
    with pytest.raises(subspace.SubspaceError, match=r"m02\.safetensors has different layers.*missing"):
        streaming.extract_bases(paths, 2, progress=False)


def test_error_different_shapes(tmp_path):
    paths = write_models(tmp_path / "models", n=4)
    bad = {**SHAPES, "head.weight": (3, 7)}
    state = {k: torch.zeros(s) for k, s in bad.items()}
    save_file(state, str(paths[3]))
    with pytest.raises(subspace.SubspaceError, match=r"m03\.safetensors: tensor head\.weight has shape \(3, 7\)"):
        streaming.extract_bases(paths, 2, progress=False)


@pytest.mark.parametrize("which", [0, 5])
def test_error_nan_in_one_model(tmp_path, which):
    paths = write_models(tmp_path / "models", n=8)
    state = load_file(str(paths[which]))
    state["head.weight"][1, 2] = float("nan")
    save_file(state, str(paths[which]))
    with pytest.raises(subspace.SubspaceError, match=rf"m0{which}\.safetensors contains NaN values in \['head\.weight'\]"):
        streaming.extract_bases(paths, 2, chunk_elems=16, progress=False)


def test_error_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(subspace.SubspaceError, match=r"no \.safetensors files in folder .*empty"):
        streaming.extract_bases(tmp_path / "empty", 2, progress=False)


def test_error_unreadable_file_and_bad_k(tmp_path):
    paths = write_models(tmp_path / "models", n=4)
    paths[1].write_bytes(b"not a safetensors file")
    with pytest.raises(subspace.SubspaceError, match=r"m01\.safetensors is not a readable safetensors file"):
        streaming.extract_bases(paths, 2, progress=False)
    paths = write_models(tmp_path / "ok", n=4)
    with pytest.raises(subspace.SubspaceError, match="k=4 is larger than the rank"):
        streaming.extract_bases(paths, 4, progress=False)
    with pytest.raises(subspace.SubspaceError, match="no such file or folder"):
        streaming.extract_bases(tmp_path / "missing", 2, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_matches_on_gpu(tmp_path):
    paths = write_models(tmp_path / "models")
    cpu = streaming.extract_bases(paths, 3, progress=False)
    gpu = streaming.extract_bases(paths, 3, device="cuda", progress=False)
    for layer in cpu:
        assert_same_basis(gpu[layer], cpu[layer], 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_file_dtypes_are_read_as_float32(tmp_path, dtype):
    paths = write_models(tmp_path / "models", n=6)
    for p in paths:                                       # one tensor of each file stored in another dtype
        state = load_file(str(p))
        state["enc.weight"] = state["enc.weight"].to(dtype)
        save_file(state, str(p))
    states = [load_file(str(p)) for p in paths]
    chunk = streaming.plan_chunks(streaming.read_layout(paths)["enc"], 1000)[0]
    X = streaming.read_chunk(paths, chunk)
    assert X.dtype == torch.float32
    assert torch.equal(X, zoo.stack_layer(states, "enc").float())


def test_many_files_beyond_the_open_file_limit(tmp_path, monkeypatch):
    """With fewer file descriptors than files, each read opens its file: same basis."""
    paths = write_models(tmp_path / "models", n=8)
    ref = streaming.extract_bases(paths, 2, chunk_elems=16, progress=False)
    monkeypatch.setattr(streaming.resource, "getrlimit", lambda _: (16, 16))
    reader = streaming.Reader(paths)
    assert reader.fds is None
    reader.close()
    got = streaming.extract_bases(paths, 2, chunk_elems=16, progress=False)
    for layer in ref:
        assert torch.equal(got[layer].components, ref[layer].components)


def test_error_truncated_file(tmp_path):
    paths = write_models(tmp_path / "models", n=4)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-40])
    with pytest.raises(subspace.SubspaceError, match=r"m02\.safetensors (is not a readable|is truncated)"):
        streaming.extract_bases(paths, 2, progress=False)


def test_empty_tensors_add_no_columns(tmp_path):
    shapes = {**SHAPES, "enc.empty": (3, 0), "void.weight": (0,)}
    paths = write_models(tmp_path / "models", n=6, shapes=shapes)
    assert list(streaming.extract_bases(paths, 2, progress=False)) == ["enc", "head"]     # "void" has no entries
    layout = streaming.read_layout(paths)
    chunks = streaming.plan_chunks(layout["enc"], 1000)
    assert chunks[-1][-1][4] == 6 * 10 + 6 and "enc.empty" not in {p[0] for c in chunks for p in c}
