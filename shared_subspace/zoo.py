"""A model zoo: many small digits MLPs saved as safetensors files, plus the per-layer stacks PCA needs.

Three zoos of one architecture (64-h-h-10, `digits.MLP`):

* "finetuned"   every member starts from ONE shared pretrained MLP (all ten digits, upright) and
                is fine-tuned on its own task (a rotation/flip of the images, a relabelling, a class
                subset) and seed -- the setting of the papers (fine-tunes of one base model).
* "independent" the same tasks, each member trained from its own random init: hidden units can come
                out in any order (permutation symmetry), so little is shared coordinate-wise.
* "random"      untrained random inits: the null model of a zoo.

A zoo folder holds `manifest.json` (architecture, training settings, one entry per member with its
task, seed, split and test accuracy) and one `<member>.safetensors` per model. Every member is
deterministic by its seed, so `shared-subspace zoo --rebuild` rebuilds the same bytes.

Per layer, a model is one vector: the layer's tensors (`fc1.weight`, `fc1.bias`) flattened and
concatenated in sorted name order. Stacking N models gives the N x D matrix that
`subspace.fit_basis` decomposes; `streaming` uses the same convention on files.
"""
from __future__ import annotations

import copy
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import digits, nulls, runtime, subspace
from .cli import command

__all__ = ["TRANSFORMS", "ZooConfig", "default_config", "plan_members", "member_task", "pretrain",
           "build_zoo", "load_manifest", "load_members", "layer_of", "layer_groups", "layer_names",
           "stack_layer", "unstack_layer", "replace_layer", "model_from_state", "evaluate", "zoo_nbytes",
           "CONTROLS", "fit_layer_bases", "layer_projector", "project_state", "accuracy_vs_k"]

FORMAT = "shared-subspace-zoo/1"
TRANSFORMS = ("identity", "rotate90", "rotate180", "rotate270", "flip_lr", "flip_ud", "transpose")
INITS = ("finetuned", "independent", "random")


# ---------------------------------------------------------------- what the zoo contains

@dataclass(frozen=True)
class ZooConfig:
    """Everything that decides a zoo's bytes (its hash names the cache folder)."""

    sizes: tuple = (64, 32, 32, 10)
    seen_transforms: tuple = TRANSFORMS[:-1]      # "transpose" is kept out: an unseen task
    unseen_transforms: tuple = TRANSFORMS[-1:]
    labelmaps: int = 3                            # relabelling tasks in the fit (task seeds 1..)
    subsets: int = 2                              # 5-class-subset tasks in the fit
    seeds: int = 3                                # fit models per task (seeds 0..seeds-1)
    heldout_seeds: int = 1                        # further seeds per seen task, never in the fit
    pretrain_epochs: int = 30
    finetune_epochs: int = 10
    independent_epochs: int = 15
    lr: float = 1e-2
    finetune_lr: float = 5e-3
    batch_size: int = 128
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=list).encode()).hexdigest()[:10]


def default_config(fast: bool | None = None) -> ZooConfig:
    """The notebook's zoo: small in fast mode (tests), larger in full mode."""
    fast = runtime.fast_mode() if fast is None else fast
    if fast:
        return ZooConfig(seeds=3, labelmaps=2, subsets=1, independent_epochs=6)
    return ZooConfig(seeds=6, labelmaps=5, subsets=4, heldout_seeds=2)


def _subset(task_seed: int) -> list[int]:
    g = torch.Generator().manual_seed(1000 + task_seed)
    return sorted(torch.randperm(10, generator=g)[:5].tolist())


def plan_members(cfg: ZooConfig) -> list[dict]:
    """One dict per member: task (kind, task_seed, classes), seed, split ("fit"/"heldout"), group.

    group "seen"   a task with models in the fit; held-out members use new seeds
    group "unseen" a task with no model in the fit (a new transform, relabelling or class subset)
    """
    seen = [dict(kind=t, task_seed=0, classes=None) for t in cfg.seen_transforms]
    seen += [dict(kind="labelmap", task_seed=i, classes=None) for i in range(1, cfg.labelmaps + 1)]
    seen += [dict(kind="identity", task_seed=i, classes=_subset(i)) for i in range(1, cfg.subsets + 1)]
    unseen = [dict(kind=t, task_seed=0, classes=None) for t in cfg.unseen_transforms]
    unseen += [dict(kind="labelmap", task_seed=101, classes=None),
               dict(kind="identity", task_seed=101, classes=_subset(101))]
    members = []
    for task in seen:
        for s in range(cfg.seeds + cfg.heldout_seeds):
            members.append(dict(task, seed=s, split="fit" if s < cfg.seeds else "heldout", group="seen"))
    members += [dict(task, seed=0, split="heldout", group="unseen") for task in unseen]
    for m in members:
        m["name"] = _member_name(m)
    return members


def _member_name(m: dict) -> str:
    task = m["kind"] if m["kind"] != "labelmap" else f"labelmap{m['task_seed']}"
    if m["classes"] is not None:
        task += "-c" + "".join(map(str, m["classes"]))
    return f"{task}-s{m['seed']}"


def member_task(m: dict) -> digits.DigitsTask:
    """The digits task a manifest entry was trained on (class subsets keep 10 outputs)."""
    return digits.make_task(m["kind"], m["task_seed"], classes=m["classes"])


def _seed_of(*parts) -> int:
    return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------- training

def pretrain(cfg: ZooConfig) -> digits.MLP:
    """The shared starting point: one MLP trained on all ten upright digits."""
    torch.manual_seed(cfg.seed)
    model = digits.MLP(cfg.sizes)
    task = digits.make_task("identity")
    digits.train_classifier(model, task.X_train, task.y_train, epochs=cfg.pretrain_epochs, lr=cfg.lr,
                            batch_size=cfg.batch_size, seed=cfg.seed)
    return model


def _train_member(m: dict, init: str, cfg: ZooConfig, base: digits.MLP | None) -> digits.MLP:
    seed = _seed_of(init, m["name"], cfg.seed)
    if init == "finetuned":
        model = copy.deepcopy(base)
    else:
        torch.manual_seed(seed)
        model = digits.MLP(cfg.sizes)
    if init == "random":
        return model
    task = member_task(m)
    epochs, lr = (cfg.finetune_epochs, cfg.finetune_lr) if init == "finetuned" else (cfg.independent_epochs, cfg.lr)
    digits.train_classifier(model, task.X_train, task.y_train, epochs=epochs, lr=lr,
                            batch_size=cfg.batch_size, seed=seed)
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def build_zoo(init: str = "finetuned", cfg: ZooConfig | None = None, *, rebuild: bool = False,
              root=None, progress: bool = True) -> Path:
    """Train (or find in the cache) a zoo and return its folder.

    init  "finetuned" (from one shared pretrained MLP) | "independent" | "random" (untrained)
    root  parent folder; default runtime.cache_dir("zoo"). The folder is `<init>-<config hash>`.
    """
    if init not in INITS:
        raise ValueError(f"unknown zoo init {init!r}: use one of {INITS}")
    cfg = cfg or default_config()
    folder = Path(root) if root is not None else runtime.cache_dir("zoo")
    folder = folder / f"{init}-{cfg.digest()}"
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and not rebuild:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    members = plan_members(cfg)
    base = pretrain(cfg) if init == "finetuned" else None
    if base is not None:
        save_file(_state(base), str(folder / "pretrained.safetensors"))
    entries = []
    for m in tqdm(members, desc=f"zoo {init}", disable=not progress):
        model = _train_member(m, init, cfg, base)
        task = member_task(m)
        save_file(_state(model), str(folder / f"{m['name']}.safetensors"))
        entries.append(dict(m, file=f"{m['name']}.safetensors",
                            accuracy=digits.accuracy(model, task.X_test, task.y_test)))
    manifest = dict(format=FORMAT, init=init, sizes=list(cfg.sizes), config=cfg.__dict__,
                    digest=cfg.digest(), pretrained="pretrained.safetensors" if base is not None else None,
                    members=entries)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=list))
    tmp.replace(manifest_path)   # the manifest is written last: its presence means the zoo is complete
    return folder


def load_manifest(folder) -> dict:
    """The zoo's manifest.json, with a clear error when the folder is not a zoo."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a built zoo (no manifest.json): run build_zoo or "
                                "`shared-subspace zoo`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_members(folder, split: str | None = None, group: str | None = None):
    """(entries, state_dicts) of the zoo's members, optionally filtered by split and group."""
    manifest = load_manifest(folder)
    entries = [m for m in manifest["members"]
               if (split is None or m["split"] == split) and (group is None or m["group"] == group)]
    return entries, [load_file(str(Path(folder) / m["file"])) for m in entries]


# ---------------------------------------------------------------- per-layer stacking

def layer_of(tensor_name: str) -> str:
    """The layer a tensor belongs to: its name without the last part (`fc1.weight` -> `fc1`)."""
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


def layer_groups(names) -> dict[str, list[str]]:
    """{layer: its tensor names in sorted order}, layers in sorted order."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(layer_of(name), []).append(name)
    return dict(sorted(groups.items()))


def layer_names(state: dict) -> list[str]:
    return list(layer_groups(state))


def stack_layer(states: list[dict], layer: str) -> torch.Tensor:
    """N x D: row i is model i's layer flattened (its tensors concatenated in sorted name order)."""
    names = layer_groups(states[0])[layer]
    return torch.stack([torch.cat([s[n].reshape(-1) for n in names]) for s in states])


def unstack_layer(vec: torch.Tensor, like: dict, layer: str) -> dict[str, torch.Tensor]:
    """Inverse of stack_layer for one row: {tensor name: tensor shaped like `like`}."""
    names = layer_groups(like)[layer]
    total = sum(like[n].numel() for n in names)
    if total != vec.numel():
        raise ValueError(f"layer {layer} has {total} parameters but the vector has {vec.numel()}")
    out, start = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = vec[start:start + size].reshape(like[n].shape).to(like[n].dtype)
        start += size
    return out


def replace_layer(state: dict, layer: str, vec: torch.Tensor) -> dict:
    """A copy of the state dict whose `layer` is set from a flat vector."""
    return {**state, **unstack_layer(vec, state, layer)}


def model_from_state(state: dict, sizes=None) -> digits.MLP:
    """An MLP holding these weights (sizes read from the tensors when not given)."""
    if sizes is None:
        groups = layer_groups(state)
        ws = [state[f"{layer}.weight"] for layer in groups]
        sizes = [ws[0].shape[1]] + [w.shape[0] for w in ws]
    model = digits.MLP(tuple(sizes))
    model.load_state_dict(state)
    return model.eval()


def evaluate(state: dict, task: digits.DigitsTask) -> float:
    """Test accuracy of the MLP with these weights on the task."""
    return digits.accuracy(model_from_state(state), task.X_test, task.y_test)


def zoo_nbytes(states: list[dict]) -> int:
    """Bytes of all the members' tensors (what storing the zoo as-is costs)."""
    return sum(t.numel() * t.element_size() for s in states for t in s.values())


# ---------------------------------------------------------------- projecting models onto per-layer bases

CONTROLS = ("basis", "mean_only", "basis_only", "random")


def fit_layer_bases(states: list[dict], k: int | None = None) -> dict:
    """{layer: subspace.Basis} of the centered per-layer stacks (all directions when k is None)."""
    return {layer: subspace.fit_basis(stack_layer(states, layer), k) for layer in layer_names(states[0])}


def layer_projector(basis, k: int, how: str = "basis", seed: int = 0):
    """x -> its replacement under one reconstruction (a function of the layer vector x):

    basis       mu + V_k^T V_k (x - mu)     the top-k subspace, with the mean
    mean_only   mu                          the zoo mean alone
    basis_only  V_k^T V_k x                 the top-k directions, no mean
    random      mu + R^T R (x - mu)         a random k-dimensional basis R (nulls.random_basis)
    """
    if how == "mean_only":
        return lambda x: nulls.mean_only(basis, x)
    if how == "basis_only":
        b = basis.truncate(k)
        return lambda x: nulls.basis_only(b, x)
    b = nulls.random_basis(basis, k, seed=seed) if how == "random" else basis.truncate(k)
    if how not in ("basis", "random"):
        raise ValueError(f"unknown reconstruction {how!r}: use one of {CONTROLS}")
    return lambda x: subspace.reconstruct(b, subspace.project(b, x))


def project_state(state: dict, projectors: dict) -> dict:
    """A copy of `state` with each layer in `projectors` replaced by projector(layer vector)."""
    for layer, f in projectors.items():
        state = replace_layer(state, layer, f(stack_layer([state], layer))[0])
    return state


def accuracy_vs_k(entries: list[dict], states: list[dict], bases: dict, ks, hows=CONTROLS,
                  layers=None, seed: int = 0) -> dict:
    """{how: (len(ks),) mean test accuracy of the models after replacing `layers` (default all)
    by each reconstruction at each k}, plus "full": the models as trained."""
    layers = list(layers or bases)
    tasks = [member_task(e) for e in entries]
    out = {"full": np.full(len(ks), np.mean([evaluate(s, t) for s, t in zip(states, tasks)]))}
    for how in hows:
        accs = []
        for k in ks:
            projectors = {layer: layer_projector(bases[layer], k, how, seed) for layer in layers}
            accs.append(np.mean([evaluate(project_state(s, projectors), t) for s, t in zip(states, tasks)]))
        out[how] = np.array(accs)
    return out


# ---------------------------------------------------------------- command line

def run(args) -> int:
    cfg = default_config(fast=bool(getattr(args, "fast", False)))
    root = getattr(args, "out", None)
    for init in getattr(args, "inits", None) or INITS:
        folder = build_zoo(init, cfg, rebuild=bool(getattr(args, "rebuild", False)), root=root)
        print(f"{init}: {folder}")
    return 0


run.add_arguments = lambda p: (
    p.add_argument("--rebuild", action="store_true", help="retrain even if the zoo is cached"),
    p.add_argument("--fast", action="store_true", help="the small fast-mode zoo"),
    p.add_argument("--inits", nargs="+", choices=INITS, help="which zoos (default: all three)"),
    p.add_argument("--out", help="parent folder (default: the cache, runtime.cache_dir('zoo'))"))
run.builds_cache = True
command("zoo", "train the digits MLP zoos (fine-tuned from one init, independent, random init)")(run)
