"""Baseline continual methods behind the `continual.Method` interface, on digits or text streams.

    SequentialLoRA   one LoRA adapter, trained task after task (forgets)
    PerTaskLoRA      one adapter per task (no forgetting; stores everything: an upper bound)
    JointLoRA        one adapter trained on all tasks seen so far (multi-task: the other upper bound)
    FrozenBase       the pretrained model, never trained (digits: the MLP; text: zero-shot by label names)
    LinearHead       frozen encoder + a linear head per task (classification)

A *backbone* says what the network is and how data reaches it: `DigitsBackbone` (the pretrained
digits MLP, LoRA on fc1..fc3, its 10-way output layer shared by all tasks) or `TextBackbone`
(a sentence encoder, LoRA on attention query/value, mean pooling, one linear head per task since
label sets differ) or `CausalBackbone` (a causal LM on generation tasks, scored by exact match). Every method reports `storage()`: parameters it keeps beyond the frozen base
model, {"shared": ..., "per_task": mean per learned task, "total": ...}.
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from shared_subspace.continual import step_bar
from shared_subspace.interference import InterferenceMonitor

__all__ = ["DigitsBackbone", "TextBackbone", "CausalBackbone", "SequentialLoRA", "PerTaskLoRA", "JointLoRA",
           "FrozenBase", "LinearHead", "n_params"]


def n_params(tensors) -> int:
    """Total number of elements."""
    return int(sum(t.numel() for t in tensors))


def _fingerprint(module: nn.Module) -> float:
    """A number that changes when the weights change (checkpoints of another base model are refused)."""
    return round(float(sum(p.detach().double().abs().sum() for p in module.parameters())), 6)


def _take(inputs, idx):
    return {k: v[idx] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[idx]


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _len(inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


# ---------------------------------------------------------------- backbones

class _Backbone:
    """What every backbone shares: a prediction is the argmax of the logits, scored in batches of eval_batch."""

    eval_batch = 128

    def predict(self, model, X, head=None) -> torch.Tensor:
        return self.logits(model, X, head).argmax(-1)


class DigitsBackbone(_Backbone):
    """The pretrained digits MLP: LoRA on every linear layer, its output layer shared by all tasks."""

    shared_head = True

    def __init__(self, mlp: nn.Module):
        self.mlp = mlp
        self.targets = [f"fc{i}" for i in range(1, mlp.n_layers + 1)]
        self.feature_dim = mlp.sizes[-2]

    def config(self) -> dict:
        return {"backbone": "digits-mlp", "sizes": list(self.mlp.sizes), "weights": _fingerprint(self.mlp)}

    def frozen_copy(self) -> nn.Module:
        model = copy.deepcopy(self.mlp).eval()
        return model.requires_grad_(False)

    def data(self, task, split: str):
        return (task.X_train, task.y_train) if split == "train" else (task.X_test, task.y_test)

    def n_classes(self, task) -> int:
        return task.n_classes

    def features(self, model, X):
        """Activations before the output layer (what a linear head sees)."""
        for i in range(1, self.mlp.n_layers):
            X = torch.relu(getattr(model, f"fc{i}")(X))
        return X

    def logits(self, model, X, head=None):
        return model(X) if head is None else head(self.features(model, X))

    def score(self, task, pred: torch.Tensor) -> float:
        return float((pred == task.y_test).float().mean())

    def zero_shot(self, model, task):
        return self.logits(model, task.X_test).argmax(-1)


class TextBackbone(_Backbone):
    """A sentence encoder (default the bundled MiniLM): LoRA on query/value, mean pooling, a head per task."""

    shared_head = False

    def __init__(self, name: str = "bundled:minilm", *, max_length: int = 48, targets=("query", "value"),
                 device=None):
        from shared_subspace.models import load_model

        self.name, self.max_length, self.targets = name, max_length, list(targets)
        self.encoder, self.tokenizer = load_model(name, kind="encoder", device=device, dtype=torch.float32)
        self.encoder.eval().requires_grad_(False)
        self.device = _device(self.encoder)
        self.feature_dim = self.encoder.config.hidden_size
        self._cache: dict = {}

    def config(self) -> dict:
        return {"backbone": self.name, "max_length": self.max_length, "targets": self.targets}

    def frozen_copy(self) -> nn.Module:
        return copy.deepcopy(self.encoder).eval().requires_grad_(False)

    def _encode(self, texts):
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")    # padded to the longest text of the split
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def data(self, task, split: str):
        key = (task.name, split)
        if key not in self._cache:
            examples = task.train if split == "train" else task.test
            if not task.labels:
                raise ValueError(f"text task {task.name!r} has no labels: only classification tasks fit a TextBackbone")
            index = {label: i for i, label in enumerate(task.labels)}
            try:
                y = torch.tensor([index[ex.target] for ex in examples], dtype=torch.long, device=self.device)
            except KeyError as exc:
                raise ValueError(f"task {task.name!r}: target {exc.args[0]!r} is not among its labels") from None
            self._cache[key] = (self._encode(ex.input for ex in examples), y)
        return self._cache[key]

    def n_classes(self, task) -> int:
        return len(task.labels)

    def features(self, model, inputs):
        """Mean of the token embeddings over the attention mask."""
        h = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1)

    def logits(self, model, inputs, head):
        return head(self.features(model, inputs))

    def score(self, task, pred: torch.Tensor) -> float:
        return float(task.score([task.labels[int(k)] for k in pred.cpu()]))

    @torch.no_grad()
    def zero_shot(self, model, task):
        """Nearest label name: argmax_c cos(embed(input), embed(label_c))."""
        inputs, _ = self.data(task, "test")
        x = nn.functional.normalize(_batched(lambda b: self.features(model, b), inputs), dim=-1)
        labels = nn.functional.normalize(self.features(model, self._encode(task.labels)), dim=-1)
        return (x @ labels.T).argmax(-1)


class CausalBackbone(_Backbone):
    """A causal language model (default the bundled SmolLM2-135M; any hub id or folder, e.g. a 1B model
    on a GPU): LoRA on q_proj/v_proj, generation tasks, no head (the LM head is shared by all tasks).

    Training is next-token cross-entropy on the completion and EOS only: `data` gives the right-padded
    prompt + completion ids and labels y (n, L-1), -100 off the completion; `logits` gives (B, V, L-1),
    so the same `cross_entropy(logits, y)` as for classification trains it. Scoring is teacher-forced
    exact match: a test example is right when the argmax token is the target at every completion
    position. With the prefix always right, that is exactly when greedy decoding writes the completion
    and then EOS (so it equals generate-and-compare, at one forward pass per example).
    """

    shared_head = True
    eval_batch = 16            # (B, V, L) logits: V is ~50k

    def __init__(self, name: str = "bundled:smollm2", *, max_length: int = 64, targets=("q_proj", "v_proj"),
                 bf16: bool | None = None, device=None):
        from shared_subspace import runtime
        from shared_subspace.models import load_model

        self.name, self.max_length, self.targets = name, max_length, list(targets)
        self.model, self.tokenizer = load_model(name, kind="causal_lm", device=device, dtype=torch.float32)
        self.model.eval().requires_grad_(False)
        self.device = _device(self.model)
        # bfloat16 autocast (default: where bf16 is native): about 1.4x faster LoRA steps on an AVX512-BF16 CPU
        self.bf16 = runtime.has_fast_bf16(self.device) if bf16 is None else bf16
        self._cache: dict = {}

    def config(self) -> dict:
        return {"backbone": self.name, "max_length": self.max_length, "targets": self.targets, "bf16": self.bf16}

    def frozen_copy(self) -> nn.Module:
        return copy.deepcopy(self.model).eval().requires_grad_(False)

    def data(self, task, split: str):
        from shared_subspace.lora import _generation_batches

        key = (task.name, split)
        if key not in self._cache:
            if task.labels:
                raise ValueError(f"task {task.name!r} is a classification task: a CausalBackbone learns generation tasks")
            batch = _generation_batches(self.tokenizer, task, list(task.train if split == "train" else task.test),
                                        self.max_length)
            inputs = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}
            self._cache[key] = (inputs, batch["labels"][:, 1:].to(self.device))
        return self._cache[key]

    def logits(self, model, inputs, head=None):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = model(**inputs).logits[:, :-1]
        return out.float().transpose(1, 2)                  # (B, V, L-1), as cross_entropy wants

    def predict(self, model, inputs, head=None) -> torch.Tensor:
        return self.logits(model, inputs, head).argmax(1)    # (B, L-1): the argmax token at each position

    def score(self, task, pred: torch.Tensor) -> float:
        _, y = self.data(task, "test")
        return float(((pred == y) | (y == -100)).all(1).float().mean())

    @torch.no_grad()
    def zero_shot(self, model, task):
        inputs, _ = self.data(task, "test")
        return _batched(lambda b: self.predict(model, b), inputs, self.eval_batch)


@torch.no_grad()
def _batched(fn, inputs, batch_size: int = 128):
    n = _len(inputs)
    return torch.cat([fn(_take(inputs, slice(s, s + batch_size))) for s in range(0, n, batch_size)])


# ---------------------------------------------------------------- LoRA methods

class _LoRAMethod:
    """Shared machinery: one PEFT-wrapped copy of the backbone, per-task heads where label sets differ."""

    name = "lora"
    mode = "sequential"

    def __init__(self, backbone, *, r: int = 8, alpha: float = 16, epochs: int = 10, lr: float = 1e-2,
                 head_lr: float | None = None, batch_size: int = 64, seed: int = 0,
                 monitor: InterferenceMonitor | None = None):
        from peft import LoraConfig, get_peft_model

        self.backbone, self.r, self.alpha, self.epochs = backbone, r, alpha, epochs
        self.lr, self.head_lr, self.batch_size, self.seed = lr, head_lr or lr, batch_size, seed
        self.monitor = monitor
        torch.manual_seed(seed)
        cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=backbone.targets, lora_dropout=0.0)
        self.model = get_peft_model(backbone.frozen_copy(), cfg)
        self.model.eval()
        self.lora = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.adapters: dict[int, dict[str, torch.Tensor]] = {}   # per-task LoRA: its saved adapters
        self.heads: dict[int, nn.Linear] = {}
        self.seen: dict[int, object] = {}                          # joint training / monitors need old tasks

    # -- interface
    def config(self) -> dict:
        return {"name": self.name, "mode": self.mode, "r": self.r, "alpha": self.alpha, "epochs": self.epochs,
                "lr": self.lr, "head_lr": self.head_lr, "batch_size": self.batch_size, "seed": self.seed,
                "monitor_every": self.monitor.every if self.monitor else None, **self.backbone.config()}

    def storage(self) -> dict:
        lora = n_params(self.lora.values())
        heads = n_params(p for h in self.heads.values() for p in h.parameters())
        n = max(1, len(self.seen))
        if self.mode == "per_task":
            stored = lora * len(self.adapters)
            return {"shared": 0, "per_task": (stored + heads) / n, "total": stored + heads}
        return {"shared": lora, "per_task": heads / n, "total": lora + heads}

    def state_dict(self) -> dict:
        return {"lora": {n: p.detach().clone() for n, p in self.lora.items()}, "adapters": self.adapters,
                "heads": {j: h.state_dict() for j, h in self.heads.items()}, "seen": self.seen,
                "monitor": self.monitor.state_dict() if self.monitor else None}

    def load_state_dict(self, state: dict) -> None:
        self._load_lora(state["lora"])
        self.adapters = dict(state["adapters"])
        self.seen = dict(state["seen"])
        self.heads = {}
        for j, sd in state["heads"].items():
            self.heads[j] = self._new_head(j, self.seen[j])
            self.heads[j].load_state_dict(sd)
        if self.monitor is not None and state["monitor"] is not None:
            self.monitor.load_state_dict(state["monitor"])

    def monitors(self) -> dict:
        return self.monitor.to_dict() if self.monitor else {}

    # -- pieces
    def _load_lora(self, tensors: dict) -> None:
        with torch.no_grad():
            for n, p in self.lora.items():
                p.copy_(tensors[n])

    def _new_head(self, task_id: int, task) -> nn.Linear | None:
        if self.backbone.shared_head:
            return None
        torch.manual_seed(self.seed * 100003 + task_id)
        return nn.Linear(self.backbone.feature_dim, self.backbone.n_classes(task)).to(_device(self.model))

    def _reset_lora(self, task_id: int) -> None:
        from peft.tuners.lora import LoraLayer

        torch.manual_seed(self.seed * 100003 + task_id)
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters("default", True)

    @contextlib.contextmanager
    def _adapter_for(self, task_id: int):
        """Per-task LoRA: swap in task_id's adapter (or none, if not learned yet), restore after."""
        if self.mode != "per_task" or task_id == getattr(self, "_training", None):
            yield
            return
        if task_id not in self.adapters:
            with self.model.disable_adapter():
                yield
            return
        current = {n: p.detach().clone() for n, p in self.lora.items()}
        self._load_lora(self.adapters[task_id])
        try:
            yield
        finally:
            self._load_lora(current)

    def _steps(self, task) -> int:
        n = _len(self.backbone.data(task, "train")[0])
        return self.epochs * math.ceil(n / self.batch_size)

    def learn(self, task_id: int, task) -> None:
        torch.manual_seed(self.seed * 100003 + task_id)
        self.seen[task_id] = task
        if self.mode == "per_task":
            self._reset_lora(task_id)
        self.heads[task_id] = self._new_head(task_id, task)
        if self.heads[task_id] is None:
            del self.heads[task_id]
        ids = sorted(self.seen) if self.mode == "joint" else [task_id]
        data = {j: self.backbone.data(self.seen[j], "train") for j in ids}
        head_params = [p for j in ids if j in self.heads for p in self.heads[j].parameters()]
        opt = torch.optim.Adam([{"params": list(self.lora.values()), "lr": self.lr},
                                {"params": head_params, "lr": self.head_lr}])
        g = torch.Generator().manual_seed(self.seed * 100003 + task_id)
        orders = {j: iter(()) for j in ids}
        steps = self._steps(task)
        if self.monitor:
            self.monitor.begin_task(task_id, self.lora.values())
        self._training = task_id
        self.model.train()
        with step_bar(steps, desc=f"{self.name} task {task_id} ({task.name})") as bar:
            for step in range(steps):
                j = ids[step % len(ids)]                      # joint: round-robin over seen tasks
                idx = next(orders[j], None)
                if idx is None:
                    n = _len(data[j][0])
                    orders[j] = iter(torch.randperm(n, generator=g).split(self.batch_size))
                    idx = next(orders[j])
                X, y = data[j]
                loss = nn.functional.cross_entropy(
                    self.backbone.logits(self.model, _take(X, idx), self.heads.get(j)), y[idx])
                opt.zero_grad()
                loss.backward()
                if self.monitor:
                    self.monitor.observe(task_id, step, lambda: torch.cat([p.grad.reshape(-1) for p in self.lora.values()]),
                                         lambda k: self.score(k, self.seen[k]))
                opt.step()
                bar.update(1)
        self.model.eval()
        self._training = None
        if self.monitor:
            self.monitor.end_task(task_id, self.lora.values())
        if self.mode == "per_task":
            self.adapters[task_id] = {n: p.detach().clone() for n, p in self.lora.items()}

    @torch.no_grad()
    def score(self, task_id: int, task) -> float:
        was_training = self.model.training
        self.model.eval()
        head = self.heads.get(task_id) or self._new_head(task_id, task)   # unseen task: a fresh head
        X, _ = self.backbone.data(task, "test")
        with self._adapter_for(task_id):
            pred = _batched(lambda b: self.backbone.predict(self.model, b, head), X, self.backbone.eval_batch)
        self.model.train(was_training)
        return self.backbone.score(task, pred)


class SequentialLoRA(_LoRAMethod):
    """One adapter trained on task after task: theta_t = argmin L_t starting from theta_{t-1}. Forgets."""

    name, mode = "sequential LoRA", "sequential"


class PerTaskLoRA(_LoRAMethod):
    """A fresh adapter per task (seeded), kept and swapped in by task id: no forgetting, T adapters stored."""

    name, mode = "per-task LoRA", "per_task"


class JointLoRA(_LoRAMethod):
    """One adapter trained on all tasks seen so far (round-robin batches, warm start from the last one).

    After the last task it is the multi-task model; it keeps every task's training data (replay of
    everything), which the storage count of parameters does not show.
    """

    name, mode = "joint LoRA", "joint"


# ---------------------------------------------------------------- no-adapter baselines

class FrozenBase:
    """The pretrained model, never trained: digits MLP as is; text: nearest label-name embedding (zero-shot)."""

    name = "frozen base"

    def __init__(self, backbone):
        self.backbone, self.model = backbone, backbone.frozen_copy()
        self._scores: dict[str, float] = {}        # the model never changes: score each task once

    def config(self) -> dict:
        return {"name": self.name, **self.backbone.config()}

    def learn(self, task_id: int, task) -> None:
        pass

    @torch.no_grad()
    def score(self, task_id: int, task) -> float:
        if task.name not in self._scores:
            self._scores[task.name] = self.backbone.score(task, self.backbone.zero_shot(self.model, task))
        return self._scores[task.name]

    def storage(self) -> dict:
        return {"shared": 0, "per_task": 0.0, "total": 0}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LinearHead:
    """Frozen encoder, a linear head per task on its features: y_hat = argmax (W_t f(x) + b_t)."""

    name = "linear head"

    def __init__(self, backbone, *, epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0):
        self.backbone, self.epochs, self.lr, self.weight_decay, self.seed = backbone, epochs, lr, weight_decay, seed
        self.model = backbone.frozen_copy()
        self.heads: dict[int, nn.Linear] = {}
        self._features: dict = {}

    def config(self) -> dict:
        return {"name": self.name, "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "seed": self.seed, **self.backbone.config()}

    def _feats(self, task, split):
        key = (task.name, split)
        if key not in self._features:
            X, y = self.backbone.data(task, split)
            self._features[key] = (_batched(lambda b: self.backbone.features(self.model, b), X), y)
        return self._features[key]

    def learn(self, task_id: int, task) -> None:
        F, y = self._feats(task, "train")
        torch.manual_seed(self.seed * 100003 + task_id)
        head = nn.Linear(F.shape[1], self.backbone.n_classes(task)).to(F.device)
        opt = torch.optim.Adam(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        with step_bar(self.epochs, desc=f"{self.name} task {task_id} ({task.name})") as bar:
            for _ in range(self.epochs):                       # full batch: features are cached
                loss = nn.functional.cross_entropy(head(F), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1)
        self.heads[task_id] = head

    @torch.no_grad()
    def score(self, task_id: int, task) -> float:
        F, _ = self._feats(task, "test")
        if task_id not in self.heads:                          # unseen task: a fresh, untrained head
            torch.manual_seed(self.seed * 100003 + task_id)
            head = nn.Linear(F.shape[1], self.backbone.n_classes(task)).to(F.device)
        else:
            head = self.heads[task_id]
        return self.backbone.score(task, head(F).argmax(-1))

    def storage(self) -> dict:
        per = [n_params(h.parameters()) for h in self.heads.values()]
        return {"shared": 0, "per_task": sum(per) / max(1, len(per)), "total": sum(per)}

    def state_dict(self) -> dict:
        return {"heads": {j: (h.in_features, h.out_features, h.state_dict()) for j, h in self.heads.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.heads = {}
        for j, (i, o, sd) in state["heads"].items():
            self.heads[j] = nn.Linear(i, o).to(_device(self.model))
            self.heads[j].load_state_dict(sd)


# ---------------------------------------------------------------- the kit's settings (notebook 04, benchmark)

RECIPES = {  # stream size and hyperparameters; "fast" keeps a notebook under its time limit on 2 cores
    ("digits", "fast"): {"n_tasks": 10, "sizes": {}, "lora": dict(r=8, alpha=16, epochs=8, lr=1e-2, batch_size=64),
                         "head": dict(epochs=100, lr=1e-2)},
    ("digits", "full"): {"n_tasks": 10, "sizes": {}, "lora": dict(r=8, alpha=16, epochs=10, lr=1e-2, batch_size=64),
                         "head": dict(epochs=200, lr=1e-2)},
    ("text", "fast"): {"n_tasks": 3, "sizes": dict(n_train=64, n_test=32),
                       "lora": dict(r=8, alpha=16, epochs=2, lr=2e-3, head_lr=1e-2, batch_size=16),
                       "head": dict(epochs=100, lr=1e-2)},
    ("text", "full"): {"n_tasks": 8, "sizes": dict(n_train=64, n_test=48),
                       "lora": dict(r=8, alpha=16, epochs=3, lr=2e-3, head_lr=1e-2, batch_size=16),
                       "head": dict(epochs=200, lr=1e-2)},
}
METHODS = {"sequential": SequentialLoRA, "per_task": PerTaskLoRA, "joint": JointLoRA,
           "frozen": FrozenBase, "linear_head": LinearHead}


def recipe(kind: str, fast: bool | None = None) -> dict:
    """The settings for a "digits" or "text" stream; fast defaults to runtime.fast_mode()."""
    from shared_subspace import runtime

    if fast is None:
        fast = runtime.fast_mode()
    try:
        return copy.deepcopy(RECIPES[(kind, "fast" if fast else "full")])
    except KeyError:
        raise ValueError(f"unknown stream kind {kind!r}: use 'digits' or 'text'") from None


def make_method(key: str, backbone, *, fast: bool | None = None, seed: int = 0,
                monitor: InterferenceMonitor | None = None, **overrides):
    """A fresh baseline by key (sequential, per_task, joint, frozen, linear_head) with the recipe's settings."""
    if key not in METHODS:
        raise ValueError(f"unknown method {key!r}: choose one of {', '.join(METHODS)}")
    kind = "digits" if isinstance(backbone, DigitsBackbone) else "text"
    r = recipe(kind, fast)
    if key == "frozen":
        return FrozenBase(backbone)
    if key == "linear_head":
        return LinearHead(backbone, seed=seed, **{**r["head"], **overrides})
    return METHODS[key](backbone, seed=seed, monitor=monitor, **{**r["lora"], **overrides})
