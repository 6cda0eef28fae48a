"""Real PEFT LoRA adapters in and out: train a zoo, stack its factors, fit shared bases, rebuild, merge.

A LoRA adapter changes each adapted linear layer by a low-rank update

    W' = W + delta_W,    delta_W = s B A,    A: (r, d_in),  B: (d_out, r),  s = alpha / r

Per adapted module, N adapters give three stacks (one row per adapter):

    A-stack  (N, r * d_in)       B-stack  (N, d_out * r)       delta_W-stack  (N, d_out * d_in)

The factors are only defined up to an invertible mixing, B A = (B G)(G^-1 A), so two adapters can
make the same delta_W with unrelated factors. The kit therefore fits shared bases at both levels:
"factors" (one basis for A and one for B per module, as in the Universal Weight Subspace and Share
papers) and "delta_W" (one basis per module for the weight change itself).

Pieces, in the order data flows:

    train_adapter / build_zoo        PEFT LoRA per task (cached, with progress bars)
    load_adapter / from_model        AdapterFactors: A, B, the head (modules_to_save) and the config
    check_compatible                 refuse adapters of other base models, target modules or ranks
    fit_zoo_basis / project / rebuild / reconstruct     per-module bases (subspace.fit_basis)
    save_adapter / factors_from_deltas                  standard PEFT adapter folders
    merge                            mean, task arithmetic, TIES (peft.utils.merge_utils), subspace merge
    applied / score                  evaluate any delta_W on a plain base model
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch

from . import runtime, subspace
from .cli import command
from .subspace import Basis

__all__ = [
    "LoraError", "LoraSettings", "PRESETS", "preset", "lora_config", "train_adapter", "predict", "score",
    "build_zoo", "ZooEntry", "AdapterFactors", "from_model", "load_adapter", "load_adapters",
    "check_compatible", "save_adapter", "without_head", "factors_from_deltas", "factor_stack", "delta_stack",
    "ZooBasis", "fit_zoo_basis", "project", "rebuild", "reconstruct", "stack_spectra", "merge",
    "MERGE_METHODS", "applied", "score_deltas", "short_module", "heldout_scores", "projection_errors",
    "merge_scores", "zoo_folder", "load_zoo", "tasks_for", "notebook_zoos",
]

ADAPTER_CONFIG, ADAPTER_WEIGHTS, META = "adapter_config.json", "adapter_model.safetensors", "zoo_meta.json"
PREFIX = "base_model.model."
SIDES = ("A", "B")


class LoraError(ValueError):
    """Adapters the kit cannot stack or rebuild (other base model, modules, rank; missing files)."""


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class LoraSettings:
    """Hyperparameters of one LoRA training run (JSON-able; their hash names the cache folder).

    shared_init  True: every adapter's A starts from the same draw (torch seeded with init_seed
                 before get_peft_model, which is what "seed everything with 0" does in practice);
                 False: each adapter draws its own A from a seed derived from (task, seed).
    """

    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("query", "value")
    dropout: float = 0.0
    steps: int = 60
    lr: float = 3e-3
    batch_size: int = 16
    max_length: int = 48
    shared_init: bool = True
    init_seed: int = 0
    bf16: bool = False          # torch.autocast(bfloat16) during training (about 2x faster for SmolLM2 on CPU)
    n_train: int = 128
    n_test: int = 64

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# The zoos notebook 03 uses, in one place so that `shared-subspace lora-zoo` pre-builds exactly them.
PRESETS = {  # (model, fast) -> settings
    ("minilm", True): LoraSettings(r=4, alpha=8, steps=16, lr=1e-2, batch_size=8, max_length=24,
                                   n_train=96, n_test=32),
    ("minilm", False): LoraSettings(r=8, alpha=16, steps=24, lr=8e-3, batch_size=8, max_length=32,
                                    n_train=160, n_test=64),
    ("smollm2", True): LoraSettings(r=8, alpha=16, target_modules=("q_proj", "v_proj"), steps=20, lr=3e-3,
                                    batch_size=8, max_length=64, bf16=True, n_train=64, n_test=24),
    ("smollm2", False): LoraSettings(r=8, alpha=16, target_modules=("q_proj", "v_proj"), steps=80, lr=3e-3,
                                     batch_size=8, max_length=64, bf16=True, n_train=160, n_test=48),
}
ZOO_TASKS = {  # (model, fast) -> task names (None: the whole suite); fast mode keeps tasks that 16 steps learn
    ("minilm", True): ("topic", "question", "negation", "formality", "emotion", "sentiment"),
    ("minilm", False): None, ("smollm2", True): None, ("smollm2", False): None,
}
ZOO_SEEDS = {  # (model, fast) -> seeds of the shared-init zoo and of the own-init zoo
    ("minilm", True): ((0, 1), (0,)), ("minilm", False): ((0, 1), (0,)),
    ("smollm2", True): ((0,), (0,)), ("smollm2", False): ((0,), (0,)),
}
MODEL_NAMES = {"minilm": "bundled:minilm", "smollm2": "bundled:smollm2"}


def preset(model: str = "minilm", fast: bool | None = None, **changes) -> LoraSettings:
    """The kit's settings for a bundled model ("minilm" or "smollm2") in fast or full mode."""
    fast = runtime.fast_mode() if fast is None else fast
    if (model, fast) not in PRESETS:
        raise LoraError(f"no preset for model {model!r}; choose one of {sorted({m for m, _ in PRESETS})}")
    return replace(PRESETS[(model, fast)], **changes)


def _stable_seed(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


# ---------------------------------------------------------------- training

def _head_names(model) -> list[str]:
    return [n for n in ("classifier", "score") if isinstance(getattr(model, n, None), torch.nn.Module)]


def lora_config(model, settings: LoraSettings, kind: str):
    """A peft.LoraConfig for a classification (head in modules_to_save) or generation task."""
    from peft import LoraConfig, TaskType

    if kind == "classification":
        extra = {"task_type": TaskType.SEQ_CLS, "modules_to_save": _head_names(model)}
    elif kind == "generation":
        extra = {"task_type": TaskType.CAUSAL_LM}
    else:
        raise LoraError(f"unknown task kind {kind!r}: expected 'classification' or 'generation'")
    present = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in settings.target_modules if t not in present]
    if missing:
        raise LoraError(f"target modules {missing} are not linear layers of this model "
                        f"(its linear layers are named {sorted(present)})")
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), **extra)


def _classification_batches(tokenizer, task, examples, max_length):
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        enc = tokenizer([e.input for e in examples], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    labels = torch.tensor([task.labels.index(e.target) for e in examples])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _generation_batches(tokenizer, task, examples, max_length):
    """prompt ids + completion ids + EOS, right-padded; labels are -100 except on completion and EOS."""
    from .tasks import completion, prompt

    rows, targets = [], []
    for e in examples:
        p = tokenizer(prompt(task, e))["input_ids"]
        t = tokenizer(completion(e), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + t)[-max_length:]
        lab = ([-100] * len(p) + t)[-max_length:]
        rows.append(ids)
        targets.append(lab)
    n = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([r + [pad] * (n - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows]),
            "labels": torch.tensor([t + [-100] * (n - len(t)) for t in targets])}


def _training_tensors(tokenizer, task, settings):
    make = _classification_batches if task.kind == "classification" else _generation_batches
    return make(tokenizer, task, list(task.train), settings.max_length)


def train_adapter(model, tokenizer, task, settings: LoraSettings, *, seed: int = 0,
                  base_name: str | None = None, progress: bool = False, on_step=None):
    """Wrap `model` with a fresh LoRA adapter and train it on `task` (loss only on target tokens).

    Returns (peft_model, losses). The A initialisation is drawn with torch seeded by
    settings.init_seed (shared_init) or a seed derived from (task name, seed); batches by `seed`.
    on_step(step, peft_model) is called after each step (1-based); returning True stops training.
    """
    from peft import get_peft_model
    from tqdm.auto import tqdm

    config = lora_config(model, settings, task.kind)
    init_seed = settings.init_seed if settings.shared_init else _stable_seed(task.name, seed, "init")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notes, raised inside PEFT
        torch.manual_seed(init_seed)
        peft_model = get_peft_model(model, config)
    if base_name is not None:  # a portable name ("bundled:minilm") instead of the resolved folder
        peft_model.peft_config["default"].base_model_name_or_path = base_name
    data = _training_tensors(tokenizer, task, settings)
    device = next(peft_model.parameters()).device
    n = data["input_ids"].shape[0]
    g = torch.Generator().manual_seed(_stable_seed(task.name, seed, "batches"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    peft_model.train()
    order, losses = torch.randperm(n, generator=g), []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    for step in tqdm(range(settings.steps), desc=task.name, leave=False, disable=not progress):
        start = (step * settings.batch_size) % n
        if start + settings.batch_size > n:  # new epoch: reshuffle
            order = torch.randperm(n, generator=g)
            start = 0
        idx = order[start:start + settings.batch_size]
        batch = {k: v[idx].to(device) for k, v in data.items()}
        width = int(batch["attention_mask"].sum(1).max())  # trim right-padding columns
        batch = {k: v[:, :width] if v.ndim == 2 else v for k, v in batch.items()}
        with autocast:
            loss = peft_model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            peft_model.eval()
            stop = on_step(step + 1, peft_model)
            peft_model.train()
            if stop:
                break
    peft_model.eval()
    return peft_model, losses


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict(model, tokenizer, task, examples: Sequence | None = None, *, batch_size: int = 64,
            max_length: int = 64) -> list[str]:
    """The model's answers for `examples` (default: the task's test set) as strings."""
    examples = list(task.test if examples is None else examples)
    device = next(model.parameters()).device
    if task.kind == "classification":
        out = []
        for i in range(0, len(examples), batch_size):
            enc = tokenizer([e.input for e in examples[i:i + batch_size]], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            logits = model(**enc).logits
            out += [task.labels[j] for j in logits.argmax(-1).tolist()]
        return out
    from .models import generate
    from .tasks import prompt

    n_new = max(len(tokenizer(e.target, add_special_tokens=False)["input_ids"]) for e in examples) + 2
    texts = generate(model, tokenizer, [prompt(task, e) for e in examples], max_new_tokens=n_new,
                     batch_size=batch_size)
    return [t.strip() for t in texts]


def score(model, tokenizer, task, **kwargs) -> float:
    """task.score of the model's answers on the test set (exact match, in [0, 1])."""
    return float(task.score(predict(model, tokenizer, task, **kwargs)))


@contextmanager
def applied(model, deltas: dict[str, torch.Tensor] | None = None, head: dict[str, torch.Tensor] | None = None):
    """Temporarily W <- W + delta_W for each named linear module, and swap in head tensors.

    `model` is the plain base model (no PEFT wrapper); module names are relative to it, head
    tensors are named like its parameters ("classifier.weight"; any shape). Restored on exit.
    """
    deltas, head = deltas or {}, head or {}
    saved_w, saved_p = {}, {}
    try:
        with torch.no_grad():
            for name, delta in deltas.items():
                W = model.get_submodule(name).weight
                saved_w[name] = W.detach().clone()
                W.add_(delta.to(W.dtype).to(W.device))
            for pname, value in head.items():
                owner, attr = pname.rsplit(".", 1)
                mod = model.get_submodule(owner)
                saved_p[pname] = getattr(mod, attr)
                setattr(mod, attr, torch.nn.Parameter(value.to(saved_p[pname].device,
                                                               saved_p[pname].dtype), requires_grad=False))
        yield model
    finally:
        with torch.no_grad():
            for name, W0 in saved_w.items():
                model.get_submodule(name).weight.copy_(W0)
            for pname, p in saved_p.items():
                owner, attr = pname.rsplit(".", 1)
                setattr(model.get_submodule(owner), attr, p)


def score_deltas(model, tokenizer, task, deltas=None, head=None, **kwargs) -> float:
    """Test score of the base model with delta_W added to its modules and the task's head swapped in."""
    with applied(model, deltas, head):
        return score(model, tokenizer, task, **kwargs)


# ---------------------------------------------------------------- adapters as factors

@dataclass(frozen=True)
class AdapterFactors:
    """One LoRA adapter as tensors: per module A (r, d_in) and B (d_out, r), plus the rest.

    Module names are relative to the base model ("bert.encoder.layer.0.attention.self.query");
    `extra` holds the other saved tensors (modules_to_save heads), named like base-model
    parameters ("classifier.weight"); `config` is the adapter_config.json content.
    """

    name: str
    config: dict
    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    task: str | None = None   # the task it was trained on, when known (build_zoo's meta)

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model_name_or_path"))

    @property
    def r(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config["lora_alpha"])

    @property
    def scaling(self) -> float:
        """s = alpha / r (alpha / sqrt(r) with rsLoRA)."""
        return self.alpha / (math.sqrt(self.r) if self.config.get("use_rslora") else self.r)

    @property
    def modules(self) -> list[str]:
        return sorted(self.A)

    @property
    def target_modules(self) -> tuple[str, ...]:
        t = self.config.get("target_modules")
        return tuple(sorted(t)) if isinstance(t, (list, tuple, set)) else (t,)

    def delta_W(self, module: str) -> torch.Tensor:
        """s B A for one module, (d_out, d_in)."""
        return self.scaling * (self.B[module].double() @ self.A[module].double()).to(self.A[module].dtype)

    def deltas(self) -> dict[str, torch.Tensor]:
        return {m: self.delta_W(m) for m in self.modules}

    def n_parameters(self) -> int:
        return sum(t.numel() for t in (*self.A.values(), *self.B.values()))


def _jsonable(config: dict) -> dict:
    return json.loads(json.dumps(config, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def _check_supported(config: dict, where: str) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraError(f"{where} is a {config.get('peft_type')} adapter, not LoRA")
    if config.get("use_dora"):
        raise LoraError(f"{where} is a DoRA adapter: its magnitude vector has no place in a factor basis")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise LoraError(f"{where} uses rank_pattern/alpha_pattern: every module must share one rank and alpha")
    if config.get("fan_in_fan_out"):
        raise LoraError(f"{where} uses fan_in_fan_out (Conv1D layers); only nn.Linear layers are supported")


def _from_state_dict(state: dict[str, torch.Tensor], config: dict, name: str, where: str) -> AdapterFactors:
    """Parse PEFT-saved keys: base_model.model.<module>.lora_A.weight / lora_B.weight / <extra>."""
    _check_supported(config, where)
    A, B, extra = {}, {}, {}
    for key, value in state.items():
        k = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if ".lora_A." in k or k.endswith(".lora_A.weight"):
            A[k.split(".lora_A")[0]] = value.detach().cpu()
        elif ".lora_B." in k or k.endswith(".lora_B.weight"):
            B[k.split(".lora_B")[0]] = value.detach().cpu()
        else:
            extra[k] = value.detach().cpu()
    if not A:
        raise LoraError(f"{where} holds no LoRA factors (no '*.lora_A.weight' tensors)")
    if A.keys() != B.keys():
        raise LoraError(f"{where} is damaged: modules {sorted(A.keys() ^ B.keys())} have only one of A and B")
    r = int(config["r"])
    for m in A:
        if A[m].ndim != 2 or B[m].ndim != 2 or A[m].shape[0] != r or B[m].shape[1] != r:
            raise LoraError(f"{where}: module {m} has A {tuple(A[m].shape)} and B {tuple(B[m].shape)}, "
                            f"which do not match its rank r={r}")
    return AdapterFactors(name, _jsonable(config), A, B, extra)


def from_model(peft_model, adapter_name: str = "default", name: str | None = None) -> AdapterFactors:
    """The factors of a live PeftModel's adapter (copied to CPU)."""
    from peft.utils import get_peft_model_state_dict

    config = peft_model.peft_config[adapter_name].to_dict()
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
    return _from_state_dict(state, config, name or adapter_name, f"adapter {adapter_name!r} of the model")


def load_adapter(folder, name: str | None = None) -> AdapterFactors:
    """Read a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise LoraError(f"no adapter folder at {folder}")
    missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (folder / f).is_file()]
    if missing:
        raise LoraError(f"{folder} is not a PEFT adapter folder: missing {', '.join(missing)}"
                        + (" (adapter_model.bin is not read; re-save with safe_serialization=True)"
                           if (folder / "adapter_model.bin").exists() else ""))
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise LoraError(f"{folder / ADAPTER_CONFIG} is not valid JSON: {exc}") from exc
    return _from_state_dict(load_file(str(folder / ADAPTER_WEIGHTS)), config, name or folder.name, str(folder))


def load_adapters(sources: Iterable, names: Sequence[str] | None = None) -> list[AdapterFactors]:
    """AdapterFactors from folders, PeftModels or AdapterFactors, checked to be stackable."""
    out = []
    for i, src in enumerate(sources):
        name = names[i] if names else None
        if isinstance(src, AdapterFactors):
            out.append(src if name is None else replace(src, name=name))
        elif isinstance(src, (str, os.PathLike)):
            out.append(load_adapter(src, name))
        elif hasattr(src, "peft_config"):
            out.append(from_model(src, name=name))
        else:
            raise LoraError(f"cannot read an adapter from {type(src).__name__}: "
                            "pass a folder, a PeftModel or AdapterFactors")
    check_compatible(out)
    return out


def check_compatible(adapters: Sequence[AdapterFactors]) -> None:
    """Refuse a set of adapters that do not share base model, target modules, rank, scaling and shapes."""
    if not adapters:
        raise LoraError("no adapters given: a zoo needs at least one")
    ref = adapters[0]
    for a in adapters[1:]:
        if a.base_model != ref.base_model:
            raise LoraError(f"adapter {a.name!r} was trained on base model {a.base_model!r} but "
                            f"{ref.name!r} on {ref.base_model!r}: a shared basis needs one base model")
        if a.modules != ref.modules or a.target_modules != ref.target_modules:
            raise LoraError(f"adapter {a.name!r} adapts other target modules ({list(a.target_modules)}, "
                            f"{len(a.modules)} layers) than {ref.name!r} ({list(ref.target_modules)}, "
                            f"{len(ref.modules)} layers): stack adapters of the same target modules")
        if a.r != ref.r:
            raise LoraError(f"adapter {a.name!r} has rank r={a.r} but {ref.name!r} has rank r={ref.r}: "
                            "factor stacks need one rank (compare their delta_W, or convert with "
                            "factors_from_deltas(adapter.deltas(), like, r))")
        if not math.isclose(a.scaling, ref.scaling, rel_tol=1e-6):
            raise LoraError(f"adapter {a.name!r} has scaling alpha/r={a.scaling:g} but {ref.name!r} has "
                            f"{ref.scaling:g}: factor stacks need one lora_alpha")
        for m in ref.modules:
            if a.A[m].shape != ref.A[m].shape or a.B[m].shape != ref.B[m].shape:
                raise LoraError(f"adapter {a.name!r}, module {m}: A {tuple(a.A[m].shape)} / B "
                                f"{tuple(a.B[m].shape)} differ from {ref.name!r}'s "
                                f"{tuple(ref.A[m].shape)} / {tuple(ref.B[m].shape)}: another model shape")


def save_adapter(adapter: AdapterFactors, folder) -> Path:
    """Write a standard PEFT adapter folder that PeftModel.from_pretrained loads (atomic)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for m in adapter.modules:
        state[f"{PREFIX}{m}.lora_A.weight"] = adapter.A[m].contiguous()
        state[f"{PREFIX}{m}.lora_B.weight"] = adapter.B[m].contiguous()
    for k, v in adapter.extra.items():
        state[f"{PREFIX}{k}"] = v.contiguous()
    with runtime.atomic_folder(folder) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter.config, indent=2, sort_keys=True))
    return folder


def without_head(adapter: AdapterFactors) -> AdapterFactors:
    """The LoRA factors alone (no modules_to_save head, no task type): what PEFT's
    add_weighted_adapter accepts, since it refuses adapters that each save the same head."""
    config = {**adapter.config, "modules_to_save": None, "task_type": None}
    return replace(adapter, config=config, extra={})


def factors_from_deltas(deltas: dict[str, torch.Tensor], like: AdapterFactors, r: int | None = None,
                        name: str | None = None) -> AdapterFactors:
    """Balanced LoRA factors of rank r for each delta_W (truncated SVD: the canonical form).

        delta_W ~= U_r S_r V_r^T = B A,   B = U_r S_r^(1/2),  A = S_r^(1/2) V_r^T,   lora_alpha = r

    Exact when rank(delta_W) <= r. The head and other settings come from `like`.
    """
    r = r or like.r
    A, B = {}, {}
    for m, D in deltas.items():
        if r > min(D.shape):
            raise LoraError(f"rank r={r} exceeds the size of module {m}'s delta_W {tuple(D.shape)}")
        U, S, Vh = torch.linalg.svd(D.double(), full_matrices=False)
        root = S[:r].sqrt()
        B[m] = (U[:, :r] * root).to(D.dtype)
        A[m] = (root[:, None] * Vh[:r]).to(D.dtype)
    config = {**like.config, "r": r, "lora_alpha": r, "use_rslora": False}
    return AdapterFactors(name or f"{like.name}-r{r}", config, A, B, dict(like.extra))


# ---------------------------------------------------------------- stacks and bases

def factor_stack(adapters: Sequence[AdapterFactors], module: str, side: str) -> torch.Tensor:
    """(N, r * d_in) for side "A" or (N, d_out * r) for side "B": one flattened factor per row."""
    if side not in SIDES:
        raise LoraError(f"side must be 'A' or 'B', got {side!r}")
    return torch.stack([getattr(a, side)[module].reshape(-1).float() for a in adapters])


def delta_stack(adapters: Sequence[AdapterFactors], module: str) -> torch.Tensor:
    """(N, d_out * d_in): one flattened delta_W = s B A per row."""
    return torch.stack([a.delta_W(module).reshape(-1).float() for a in adapters])


LEVELS = {"factors": SIDES, "delta_W": ("delta_W",)}


def _stack(adapters, module, side):
    return delta_stack(adapters, module) if side == "delta_W" else factor_stack(adapters, module, side)


def _vector(adapter: AdapterFactors, module: str, side: str) -> torch.Tensor:
    if side == "delta_W":
        return adapter.delta_W(module).reshape(-1).float()
    return getattr(adapter, side)[module].reshape(-1).float()


@dataclass(frozen=True)
class ZooBasis:
    """Per-module shared bases fitted on a zoo: bases[(module, side)] with side "A", "B" or "delta_W"."""

    level: str
    bases: dict[tuple[str, str], Basis]
    template: AdapterFactors  # config and shapes of the zoo (its first adapter)

    @property
    def modules(self) -> list[str]:
        return sorted({m for m, _ in self.bases})

    @property
    def sides(self) -> tuple[str, ...]:
        return LEVELS[self.level]

    @property
    def k(self) -> int:
        return min(b.k for b in self.bases.values())

    def truncate(self, k: int) -> "ZooBasis":
        """The same bases keeping min(k, available) directions each."""
        if k < 0:
            raise LoraError(f"k must be >= 0, got {k}")
        return replace(self, bases={key: _truncate0(b, k) for key, b in self.bases.items()})

    def n_parameters(self) -> int:
        """Numbers stored for the shared part: every basis's components and mean."""
        return sum(b.components.numel() + b.mean.numel() for b in self.bases.values())


def _truncate0(b: Basis, k: int) -> Basis:
    """Like Basis.truncate but allows k = 0 (no directions: the mean alone) and k above b.k (kept)."""
    k = min(k, b.k)
    return Basis(b.components[:k], b.mean, b.singular_values, b.centered, b.method)


def fit_zoo_basis(adapters: Sequence[AdapterFactors], *, k: int | None = None, energy: float | None = None,
                  level: str = "factors", center: bool = True) -> ZooBasis:
    """Per module: fit_basis on the A and B stacks (level="factors") or the delta_W stack (level="delta_W").

    k is capped at each stack's rank, so k=None or a large k keeps every direction (the round trip).
    """
    if level not in LEVELS:
        raise LoraError(f"level must be one of {list(LEVELS)}, got {level!r}")
    check_compatible(adapters)
    bases = {}
    for m in adapters[0].modules:
        for side in LEVELS[level]:
            X = _stack(adapters, m, side).double()
            full = subspace.fit_basis(X, energy=energy, center=center) if energy else \
                subspace.fit_basis(X, center=center)
            bases[(m, side)] = _truncate0(full, k) if k is not None else full
    return ZooBasis(level, bases, adapters[0])


def project(zb: ZooBasis, adapter: AdapterFactors) -> dict[tuple[str, str], torch.Tensor]:
    """Coefficients per (module, side): coeffs = (x - mu) V^T."""
    check_compatible([zb.template, adapter])
    return {key: (_vector(adapter, *key).double() - b.mean) @ b.components.T for key, b in zb.bases.items()}


def rebuild(zb: ZooBasis, coeffs: dict, *, name: str = "rebuilt", like: AdapterFactors | None = None,
            mean: bool = True) -> AdapterFactors | dict[str, torch.Tensor]:
    """x_hat = mu + coeffs V per (module, side) (mean=False drops mu: the basis-only control).

    Factor level: an AdapterFactors (head and config from `like`, default the zoo's template).
    delta_W level: a dict module -> delta_W (turn it into factors with factors_from_deltas).
    """
    like = like or zb.template
    out = {}
    for key, b in zb.bases.items():
        x = coeffs[key] @ b.components + (b.mean if mean else 0)
        out[key] = x.float()
    if zb.level == "delta_W":
        return {m: out[(m, "delta_W")].reshape(like.B[m].shape[0], like.A[m].shape[1]) for m in zb.modules}
    A = {m: out[(m, "A")].reshape(like.A[m].shape) for m in zb.modules}
    B = {m: out[(m, "B")].reshape(like.B[m].shape) for m in zb.modules}
    return AdapterFactors(name, dict(like.config), A, B, dict(like.extra))


CONTROLS = ("basis", "mean_only", "basis_only")


def reconstruct(zb: ZooBasis, adapter: AdapterFactors, k: int | None = None, control: str = "basis"):
    """The adapter seen through the basis, as a dict module -> delta_W, with the adapter's own head.

    control  "basis"       mu + P_k (x - mu)   projection onto the top-k directions through the mean
             "mean_only"   mu                  the zoo's average, nothing of the adapter itself
             "basis_only"  P_k x               the top-k directions with no mean
    At the factor level delta_W = s B_hat A_hat (each factor rebuilt on its own basis).
    """
    if control not in CONTROLS:
        raise LoraError(f"control must be one of {CONTROLS}, got {control!r}")
    zb = zb.truncate(k if k is not None else zb.k) if control != "mean_only" else zb.truncate(0)
    if control == "basis_only":
        coeffs = {key: _vector(adapter, *key).double() @ b.components.T for key, b in zb.bases.items()}
    else:
        coeffs = project(zb, adapter)
    out = rebuild(zb, coeffs, like=adapter, name=f"{adapter.name}-{control}", mean=control != "basis_only")
    return out.deltas() if isinstance(out, AdapterFactors) else out


def stack_spectra(adapters: Sequence[AdapterFactors], *, level: str = "factors",
                  center: bool = True) -> dict[tuple[str, str], torch.Tensor]:
    """Explained-variance ratios of every (module, side) stack (the scree plots' data)."""
    zb = fit_zoo_basis(adapters, level=level, center=center)
    return {key: b.explained_variance_ratio.float() for key, b in zb.bases.items()}


# ---------------------------------------------------------------- merging

MERGE_METHODS = ("mean_factors", "subspace", "subspace_uncentered", "mean_delta", "task_arithmetic", "ties")


def merge(adapters: Sequence[AdapterFactors], method: str, *, k: int | None = None, lam: float = 0.3,
          density: float = 0.2) -> dict[str, torch.Tensor]:
    """One delta_W per module that stands in for all adapters (each task keeps its own head).

    mean_factors         s B_bar A_bar                       (average the factors, then multiply)
    subspace             centered factor basis (top k): average the coefficients, rebuild;
                         the coefficients of the zoo's own adapters average to 0, so this IS mean_factors
    subspace_uncentered  uncentered factor basis (top k): the mean factors projected onto k directions
    mean_delta           (1/N) sum_i delta_W_i               (= task arithmetic with lambda = 1/N)
    task_arithmetic      lam * sum_i delta_W_i               (peft.utils.merge_utils.task_arithmetic)
    ties                 trim to `density`, elect signs, disjoint mean (peft.utils.merge_utils.ties)
    The delta_W methods are PEFT's add_weighted_adapter "cat"/"ties_svd" before any SVD truncation.
    """
    from peft.utils import merge_utils

    if method not in MERGE_METHODS:
        raise LoraError(f"unknown merge method {method!r}; choose one of {MERGE_METHODS}")
    check_compatible(adapters)
    N, ref = len(adapters), adapters[0]
    if method in ("mean_factors", "subspace", "subspace_uncentered"):
        if method == "mean_factors":
            A = {m: torch.stack([a.A[m] for a in adapters]).mean(0) for m in ref.modules}
            B = {m: torch.stack([a.B[m] for a in adapters]).mean(0) for m in ref.modules}
            return AdapterFactors("mean", ref.config, A, B).deltas()
        zb = fit_zoo_basis(adapters, k=k, center=method == "subspace")
        coeffs = [project(zb, a) for a in adapters]
        mean_coeffs = {key: torch.stack([c[key] for c in coeffs]).mean(0) for key in zb.bases}
        return rebuild(zb, mean_coeffs, like=ref).deltas()
    out = {}
    for m in ref.modules:
        deltas = [a.delta_W(m).float() for a in adapters]
        if method == "ties":
            out[m] = merge_utils.ties(deltas, torch.ones(N), density, "total")
        else:
            w = 1.0 / N if method == "mean_delta" else lam
            out[m] = merge_utils.task_arithmetic(deltas, torch.full((N,), w))
    return out


# ---------------------------------------------------------------- experiments (rows for a DataFrame)

def short_module(name: str) -> str:
    """"bert.encoder.layer.3.attention.self.query" -> "3.query" (layer index . module)."""
    parts = name.split(".")
    layer = next((p for p in parts if p.isdigit()), None)
    return f"{layer}.{parts[-1]}" if layer is not None else parts[-1]


def _by_task(adapters: Sequence[AdapterFactors]) -> dict[str, list[AdapterFactors]]:
    if any(a.task is None for a in adapters):
        raise LoraError("these adapters do not know their task: load them with load_zoo(entries)")
    groups: dict[str, list[AdapterFactors]] = {}
    for a in adapters:
        groups.setdefault(a.task, []).append(a)
    return groups


def heldout_scores(model, tokenizer, adapters: Sequence[AdapterFactors], tasks: Sequence, *, ks: Sequence[int],
                   heldout: Sequence[str] | None = None, hold_out: str | Sequence[str] = "task",
                   levels: Sequence[str] = ("factors", "delta_W"), progress: bool = True,
                   **score_kwargs) -> list[dict]:
    """Score held-out adapters rebuilt through bases fitted without them. One row per
    (adapter, hold_out, level, control, k); every variant keeps the held-out adapter's own head.

    hold_out  "task"     the basis never saw the task (all of its adapters are left out)
              "adapter"  only this adapter is left out (other seeds of its task stay in)
              "none"     nothing is left out: the in-sample view (full k rebuilds the adapter exactly)
              (a list runs several; "original" and "none" rows come once, with hold_out "-")
    control   "original" the adapter itself;  "none" no delta_W (the head alone);
              "basis" / "basis_only" at each k (capped at the basis size);  "mean_only" (k = 0)
    heldout   names of the adapters to hold out (default: all)
    """
    from tqdm.auto import tqdm

    views = [hold_out] if isinstance(hold_out, str) else list(hold_out)
    bad = [v for v in views if v not in ("task", "adapter", "none")]
    if bad:
        raise LoraError(f"hold_out must be 'task', 'adapter' or 'none', got {bad[0]!r}")
    by_name = {t.name: t for t in tasks}
    _by_task(adapters)
    chosen = [a for a in adapters if heldout is None or a.name in heldout]
    rows = []
    for a in tqdm(chosen, desc="held-out adapters", disable=not progress):
        task = by_name[a.task]

        def add(view, level, control, k, deltas):
            rows.append({"task": a.task, "adapter": a.name, "hold_out": view, "level": level, "control": control,
                         "k": k, "score": score_deltas(model, tokenizer, task, deltas, a.extra, **score_kwargs)})
        add("-", "-", "original", None, a.deltas())
        add("-", "-", "none", 0, None)
        for view in views:
            rest = {"task": [b for b in adapters if b.task != a.task], "none": list(adapters),
                    "adapter": [b for b in adapters if b is not a]}[view]
            for level in levels:
                zb = fit_zoo_basis(rest, level=level)
                add(view, level, "mean_only", 0, reconstruct(zb, a, control="mean_only"))
                top = min(max(ks), zb.k)
                for k in sorted({min(k, zb.k) for k in ks}):
                    add(view, level, "basis", k, reconstruct(zb, a, k, "basis"))
                add(view, level, "basis_only", top, reconstruct(zb, a, top, "basis_only"))
    return rows


def projection_errors(zb: ZooBasis, adapters: Sequence[AdapterFactors], ks: Sequence[int]) -> list[dict]:
    """Relative projection error ||x - x_hat|| / ||x - mu|| per (adapter, module, side, k)."""
    rows = []
    for (m, side), b in zb.bases.items():
        X = torch.stack([_vector(a, m, side).double() for a in adapters])
        for k in sorted({min(k, b.k) for k in ks}):
            err = subspace.relative_projection_error(_truncate0(b, k), X) if k > 0 else torch.ones(len(adapters))
            rows += [{"adapter": a.name, "module": m, "side": side, "k": k, "error": float(e)}
                     for a, e in zip(adapters, err)]
    return rows


def merge_scores(model, tokenizer, adapters: Sequence[AdapterFactors], tasks: Sequence, *,
                 methods: Sequence[str] = MERGE_METHODS, k: int | None = None, progress: bool = True,
                 **merge_kwargs) -> list[dict]:
    """Merge one adapter per task (the first of each task) and score every task with the merged
    delta_W and its own head; rows also for "individual" (the task's own adapter) and "none"."""
    from tqdm.auto import tqdm

    by_name = {t.name: t for t in tasks}
    chosen = [group[0] for group in _by_task(adapters).values()]
    merged = {"individual": None, "none": {}}
    merged.update({m: merge(chosen, m, k=k, **merge_kwargs) for m in methods})
    rows = []
    for method, deltas in tqdm(merged.items(), desc="merges", disable=not progress):
        for a in chosen:
            d = a.deltas() if deltas is None else deltas
            rows.append({"method": method, "task": a.task,
                         "score": score_deltas(model, tokenizer, by_name[a.task], d, a.extra)})
    return rows


# ---------------------------------------------------------------- the zoo builder

@dataclass(frozen=True)
class ZooEntry:
    """One trained adapter of a zoo: where it is and how it did."""

    task: str
    seed: int
    path: Path
    score: float          # test score of the trained adapter (through PEFT)
    base_score: float     # test score with LoRA switched off (classification: the trained head alone)
    seconds: float
    final_loss: float


def _task_digest(task) -> str:
    blob = json.dumps([task.name, task.kind, list(task.labels),
                       [(e.input, e.target) for e in task.train], [(e.input, e.target) for e in task.test]])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("bundled:", ""))


def zoo_folder(model_name: str, settings: LoraSettings) -> Path:
    """runtime.cache_dir("adapters", <model>, <settings hash>): where build_zoo caches adapters."""
    return runtime.cache_dir("adapters", _slug(model_name), settings.key())


def _train_one(model_name, task, settings, seed, folder, progress):
    from .models import load_model

    kind = "sequence_classification" if task.kind == "classification" else "causal_lm"
    extra = {"num_labels": len(task.labels)} if task.kind == "classification" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_stable_seed(task.name, seed, "head"))  # the fresh classification head
        model, tokenizer = load_model(model_name, kind=kind, **extra)
    t0 = time.perf_counter()
    peft_model, losses = train_adapter(model, tokenizer, task, settings, seed=seed, base_name=model_name,
                                       progress=progress)
    seconds = time.perf_counter() - t0
    test_score = score(peft_model, tokenizer, task, max_length=settings.max_length)
    with peft_model.disable_adapter():
        base_score = score(peft_model, tokenizer, task, max_length=settings.max_length)
    meta = {"task": task.name, "seed": seed, "score": test_score, "base_score": base_score,
            "seconds": seconds, "final_loss": losses[-1] if losses else float("nan"),
            "losses": losses, "task_digest": _task_digest(task), "settings": asdict(settings),
            "model": model_name}
    with runtime.atomic_folder(folder) as tmp:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)
        (tmp / META).write_text(json.dumps(meta, indent=1))
    return meta


def build_zoo(model_name: str, tasks: Sequence, settings: LoraSettings, *, seeds: Sequence[int] = (0,),
              rebuild: bool = False, progress: bool = True, folder: Path | None = None) -> list[ZooEntry]:
    """Train (or read from the cache) one adapter per (task, seed); a tqdm bar over adapters.

    Cache: zoo_folder(model_name, settings)/<task>-s<seed>/ holds the PEFT adapter folder and
    zoo_meta.json (scores, time, losses, a digest of the task's examples: a changed task retrains).
    """
    from tqdm.auto import tqdm

    folder = Path(folder) if folder else zoo_folder(model_name, settings)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(t, s) for s in seeds for t in tasks]
    out = []
    bar = tqdm(jobs, desc=f"LoRA zoo ({_slug(model_name)}, r={settings.r})", disable=not progress)
    for task, seed in bar:
        path = folder / f"{_slug(task.name)}-s{seed}"
        meta = None
        if not rebuild and (path / META).is_file() and (path / ADAPTER_WEIGHTS).is_file():
            meta = json.loads((path / META).read_text())
            if meta.get("task_digest") != _task_digest(task):
                meta = None
        if meta is None:
            bar.set_postfix_str(f"training {task.name}")
            meta = _train_one(model_name, task, settings, seed, path, progress=False)
        out.append(ZooEntry(task.name, seed, path, meta["score"], meta["base_score"], meta["seconds"],
                            meta["final_loss"]))
    return out


def load_zoo(entries: Sequence[ZooEntry]) -> list[AdapterFactors]:
    """The adapters of a zoo as factors, named "<task>-s<seed>", checked to be stackable."""
    adapters = [replace(load_adapter(e.path, f"{e.task}-s{e.seed}"), task=e.task) for e in entries]
    check_compatible(adapters)
    return adapters


def tasks_for(model: str = "minilm", fast: bool | None = None, seed: int = 0):
    """The tasks of a bundled model's zoo: classification for "minilm", generation for "smollm2"."""
    from . import tasks

    fast = runtime.fast_mode() if fast is None else fast
    settings = preset(model, fast)
    make = tasks.generation_tasks if model == "smollm2" else tasks.classification_tasks
    suite = make(seed=seed, n_train=settings.n_train, n_test=settings.n_test)
    names = ZOO_TASKS[(model, fast)]
    return suite if names is None else [t for t in suite if t.name in names]


def notebook_zoos(model: str = "minilm", fast: bool | None = None, *, rebuild: bool = False,
                  progress: bool = True) -> dict[str, list[ZooEntry]]:
    """The two zoos of notebook 03: "shared" (every A from one init) and "own" (each A its own init)."""
    fast = runtime.fast_mode() if fast is None else fast
    shared = preset(model, fast)
    seeds_shared, seeds_own = ZOO_SEEDS[(model, fast)]
    suite, name = tasks_for(model, fast), MODEL_NAMES[model]
    return {"shared": build_zoo(name, suite, shared, seeds=seeds_shared, rebuild=rebuild, progress=progress),
            "own": build_zoo(name, suite, replace(shared, shared_init=False), seeds=seeds_own,
                             rebuild=rebuild, progress=progress)}


def _cli(args) -> int:
    """shared-subspace lora-zoo [--model minilm|smollm2|all] [--fast] [--rebuild]"""
    runtime.set_threads()
    model = getattr(args, "model", None) or "minilm"
    for name in (["minilm", "smollm2"] if model == "all" else [model]):
        zoos = notebook_zoos(name, fast=bool(getattr(args, "fast", False)),
                             rebuild=bool(getattr(args, "rebuild", False)))
        for kind, entries in zoos.items():
            mean = sum(e.score for e in entries) / len(entries)
            print(f"{name} {kind}-init zoo: {len(entries)} adapters, mean test score {mean:.3f}, "
                  f"in {entries[0].path.parent}")
    return 0


def _cli_arguments(p) -> None:
    p.add_argument("--model", choices=["minilm", "smollm2", "all"], default="minilm",
                   help="bundled model of the zoo (smollm2: generation tasks, ~1-2 s per step on a CPU)")
    p.add_argument("--fast", action="store_true", help="the small fast-mode zoo")
    p.add_argument("--rebuild", action="store_true", help="retrain even if cached")


_cli.add_arguments = _cli_arguments  # set before registering: cli.command reads it at decoration time
_cli.builds_cache = True
command("lora-zoo", "train (or load from the cache) the LoRA adapter zoos of notebook 03")(_cli)
