"""Fine-tuning strategies from params, for any transformers model with an encoder.

Task-agnostic: the same code serves sequence and token classification, extractive QA heads and encoder-decoder
models, because the model is cut into parts generically:

- the **body**: `model.base_model` (e.g. `BertModel` inside `BertForSequenceClassification`); for a model that
  is its own base model (`EncoderDecoderModel`), its encoder (`get_encoder()`);
- the **layers**: the first `ModuleList` in the body as long as its config's `num_hidden_layers` (as
  `pipelines.train.encoder_layers` finds them);
- the **embeddings**: body parameters outside the layers whose name contains "embed" (word, position and type
  embeddings, their LayerNorm, ELECTRA's projection) plus the input embeddings;
- the **rest of the body**: other body parameters (BERT's pooler, a final LayerNorm, a decoder stack): above the
  top layer;
- the **head**: every parameter outside the body (the new, randomly initialised task head).

Strategies (each off by default):

- **layer-wise learning-rate decay** (`train.layer_lr_decay` = d, ELECTRA/ULMFiT convention): with L layers,
  depth 0 = embeddings, depth i+1 = layer i, depth L+1 = rest of the body; a parameter at depth k gets
  `learning_rate * d ** (L + 1 - k)`. So the rest of the body trains at `learning_rate`, the top layer at
  `lr*d`, layer 0 at `lr*d**L` and the embeddings at `lr*d**(L+1)`;
- a **head learning rate** (`train.head_learning_rate`, empty = `learning_rate`), not decayed;
- **weight decay** on every trainable parameter except biases and normalisation weights; parameters frozen by
  `model.freeze_*` get no group (so no optimiser state);
- **gradual unfreezing** (`train.gradual_unfreezing`, ULMFiT): epoch 1 trains the head, the rest of the body and
  the top layer; each further epoch unfreezes the next layer down; the embeddings come last (epoch L+1). The
  trainable set at epoch e depends on e alone, so a resumed run sets it again from its epoch;
- **re-initialised top layers** (`model.reinit_top_layers`): the pooler (when the body has one) and the top N
  layers start from fresh weights (Zhang et al. 2021, "Revisiting few-sample BERT fine-tuning");
- the **little-data recipe** (`train.recipe`): see `resolve_recipe`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.config import ModelConfig, TrainConfig
from pipelines.errors import ModelLoadError

log = logging.getLogger(__name__)

# Parameter-name endings that never get weight decay (besides every parameter of a normalisation module).
NO_DECAY_SUFFIXES = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")

# ----------------------------------------------------------------------------------------------- model parts


@dataclass(frozen=True)
class LayerMap:
    """Where each parameter sits: `depth[name]` for body parameters, `head` for the rest.

    Depth 0 = embeddings, i+1 = encoder layer i, num_layers+1 = rest of the body (pooler, final norm, decoder).
    """

    num_layers: int
    depth: dict[str, int]
    head: frozenset[str]
    layer_names: tuple[str, ...] = field(default=())  # module path of each layer, for messages

    @property
    def top(self) -> int:
        return self.num_layers + 1


def model_body(model: Any) -> Any:
    """The pre-trained part of the model: base_model, or the encoder of a model that is its own base model."""
    base = getattr(model, "base_model", model)
    if base is not model:
        return base
    get_encoder = getattr(model, "get_encoder", None)
    if callable(get_encoder):
        try:
            encoder = get_encoder()
        except (AttributeError, NotImplementedError):
            encoder = None
        if encoder is not None and encoder is not model:
            return encoder
    return model


def find_layers(body: Any) -> list[Any]:
    """The transformer blocks of `body`: its first ModuleList as long as its config's num_hidden_layers."""
    import torch

    config = getattr(body, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if not n:
        return []
    for module in body.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return list(module)
    return []


def layer_map(model: Any) -> LayerMap:
    """Depth of every parameter of `model` (see LayerMap)."""
    body = model_body(model)
    layers = find_layers(body)
    num_layers = len(layers)
    in_layer = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    in_body = {id(p) for p in body.parameters()}
    input_embeddings: set[int] = set()
    get_input_embeddings = getattr(body, "get_input_embeddings", None)
    if callable(get_input_embeddings):
        try:
            module = get_input_embeddings()
        except (AttributeError, NotImplementedError):
            module = None
        if module is not None:
            input_embeddings = {id(p) for p in module.parameters()}
    depth: dict[str, int] = {}
    head: set[str] = set()
    for name, p in model.named_parameters():
        if id(p) not in in_body:
            head.add(name)
        elif id(p) in in_layer:
            depth[name] = in_layer[id(p)] + 1
        elif id(p) in input_embeddings or "embed" in name.lower():
            depth[name] = 0
        else:
            depth[name] = num_layers + 1
    names = {id(m): n for n, m in model.named_modules()}
    return LayerMap(num_layers, depth, frozenset(head), tuple(names.get(id(layer), "?") for layer in layers))


def _require_layers(lmap: LayerMap, setting: str) -> None:
    if lmap.num_layers == 0:
        raise ModelLoadError(
            f"{setting}: cannot find the encoder layers of this model (no ModuleList of num_hidden_layers blocks)"
        )


def _no_decay_names(model: Any) -> set[str]:
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if "norm" in type(module).__name__.lower():
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    names.update(n for n, _ in model.named_parameters() if n.endswith(NO_DECAY_SUFFIXES))
    return names


# ----------------------------------------------------------------------------------------------- optimiser


def parameter_groups(model: Any, train_cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: one per (head | depth) x (decay | no decay), each with its own lr; frozen params left out.

    Ordered from the top (head first, then the rest of the body, the top layer, ..., the embeddings), so the
    first group's lr is the head's. Each group carries a `name` ("head", "body_top", "layer.5", "embeddings",
    with a ".no_decay" suffix) for logs and tests.
    """
    decay = train_cfg.layer_lr_decay
    lr = train_cfg.learning_rate
    head_lr = train_cfg.head_learning_rate if train_cfg.head_learning_rate is not None else lr
    lmap = layer_map(model)
    if decay < 1.0:
        _require_layers(lmap, f"train.layer_lr_decay={decay}")
    no_decay = _no_decay_names(model)
    buckets: dict[tuple[int, bool], list[Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rank = lmap.top + 1 if name in lmap.head else lmap.depth[name]
        buckets.setdefault((rank, name in no_decay), []).append(p)
    groups = []
    for (rank, skip_decay), params in sorted(buckets.items(), key=lambda item: (-item[0][0], item[0][1])):
        if rank == lmap.top + 1:
            label, group_lr = "head", head_lr
        else:
            label = "embeddings" if rank == 0 else "body_top" if rank == lmap.top else f"layer.{rank - 1}"
            group_lr = lr * decay ** (lmap.top - rank)
        groups.append(
            {
                "params": params,
                "lr": group_lr,
                "weight_decay": 0.0 if skip_decay else train_cfg.weight_decay,
                "name": label + (".no_decay" if skip_decay else ""),
            }
        )
    return groups


def _fused_ok() -> bool:
    """torch's fused AdamW runs on CPU since torch 2.4; checked once on a tiny problem, not assumed."""
    global _FUSED
    if _FUSED is None:
        import torch

        try:
            p = torch.nn.Parameter(torch.ones(2))
            p.grad = torch.ones(2)
            torch.optim.AdamW([p], lr=0.1, fused=True).step()
            _FUSED = bool(torch.isfinite(p).all())
        except (RuntimeError, TypeError, ValueError) as exc:
            log.info("fused AdamW unavailable (%s); using the default implementation", exc)
            _FUSED = False
    return _FUSED


_FUSED: bool | None = None


def build_optimizer(model: Any, train_cfg: TrainConfig) -> Any:
    """AdamW over `parameter_groups` (fused kernels where this torch supports them on the model's device).

    With `train.sparse_embedding_updates` (and `sparse_embeddings_apply`), the input embedding computes sparse
    gradients and the optimiser updates only the rows each batch used (`RowSparseAdamW`)."""
    groups = parameter_groups(model, train_cfg)
    if not groups:
        raise ModelLoadError("model.freeze_*: every parameter is frozen; there is nothing to train")
    kwargs: dict[str, Any] = {"fused": True} if _fused_ok() else {}
    if train_cfg.sparse_embedding_updates and enable_sparse_embeddings(model):
        return row_sparse_adamw_class()(groups, lr=train_cfg.learning_rate, **kwargs)
    import torch

    return torch.optim.AdamW(groups, lr=train_cfg.learning_rate, **kwargs)


# ----------------------------------------------------------------------------------------------- sparse rows


def sparse_embeddings_apply(model: Any) -> str | None:
    """Why the input embedding cannot take sparse gradients here, or None when it can: it must be a plain
    `nn.Embedding` that trains, whose weight no other module shares (tied to an LM head, or encoder and decoder
    tied, its gradient is dense anyway), in a single-process run (DDP would all-reduce a dense copy)."""
    import torch

    from pipelines import distributed

    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if type(embedding) is not torch.nn.Embedding:
        return "the input embedding is not a plain torch.nn.Embedding"
    if not embedding.weight.requires_grad:
        return "the input embedding is frozen"
    if embedding.max_norm is not None or embedding.scale_grad_by_freq:
        return "the input embedding renormalises or scales its gradient"
    uses = sum(p is embedding.weight for _, p in model.named_parameters(remove_duplicate=False))
    if uses != 1:
        return "the input embedding's weight is tied to another weight"
    if distributed.world_size() > 1:
        return "distributed training all-reduces dense gradients"
    return None


def enable_sparse_embeddings(model: Any) -> bool:
    """Make the input embedding compute sparse (row) gradients where `sparse_embeddings_apply` allows."""
    reason = sparse_embeddings_apply(model)
    if reason is not None:
        log.info("train.sparse_embedding_updates: dense embedding updates (%s)", reason)
        return False
    model.get_input_embeddings().sparse = True
    return True


def row_sparse_adamw_class() -> type:
    """`RowSparseAdamW` (built on first use, so importing this module does not import torch)."""
    global _ROW_SPARSE
    if _ROW_SPARSE is None:
        import torch

        class RowSparseAdamW(torch.optim.AdamW):  # type: ignore[misc, name-defined]
            """AdamW (fused where asked) for dense gradients; a parameter whose gradient is sparse (an
            embedding's rows) gets the same AdamW update on those rows only, its moments kept per row and its
            bias correction counted in its own steps ("lazy" Adam). Rows a batch did not use keep their weights
            and moments. With every row in every batch it is AdamW exactly (tested)."""

            def step(self, closure: Any = None) -> Any:
                sparse = [
                    (group, p, p.grad)
                    for group in self.param_groups
                    for p in group["params"]
                    if p.grad is not None and p.grad.is_sparse
                ]
                for _, p, _ in sparse:
                    p.grad = None  # AdamW's own step skips them
                try:
                    loss = super().step(closure)
                finally:
                    for _, p, grad in sparse:
                        p.grad = grad
                with torch.no_grad():
                    for group, p, grad in sparse:
                        self._sparse_rows_step(group, p, grad)
                return loss

            def _sparse_rows_step(self, group: dict[str, Any], p: Any, grad: Any) -> None:
                if group.get("amsgrad") or group.get("maximize"):
                    raise ValueError("sparse embedding updates support neither amsgrad nor maximize")
                grad = grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                beta1, beta2 = group["betas"]
                lr, eps, decay = float(group["lr"]), group["eps"], group["weight_decay"]
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
                exp_avg_sq.addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                weights = p.index_select(0, rows)
                if decay:
                    weights.mul_(1 - lr * decay)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                weights.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
                p.index_copy_(0, rows, weights)

        _ROW_SPARSE = RowSparseAdamW
    return _ROW_SPARSE


_ROW_SPARSE: type | None = None


def clip_gradients(parameters: Any, max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` that also takes sparse gradients (coalesced in place, their values
    counted once per row): the same total norm and scaling as for the dense equivalents."""
    import torch

    grads = [p for p in parameters if p.grad is not None]
    sparse = [p for p in grads if p.grad.is_sparse]
    if not sparse:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    dense = [p for p in grads if not p.grad.is_sparse]
    squares = [torch.nn.utils.get_total_norm([p.grad for p in dense]) ** 2] if dense else []
    for p in sparse:
        p.grad = p.grad.coalesce()
        squares.append(torch.linalg.vector_norm(p.grad.values()) ** 2)
    total = torch.stack(squares).sum().sqrt()
    torch.nn.utils.clip_grads_with_norm_(dense, max_norm, total)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # clip_grads_with_norm_'s coefficient
    for p in sparse:
        p.grad.values().mul_(coef)
    return float(total)


def describe_groups(optimizer: Any) -> dict[str, float]:
    """Initial lr of each named group (no-decay twins share their lr), e.g. for a log line or MLflow params."""
    return {g["name"]: g.get("initial_lr", g["lr"]) for g in optimizer.param_groups if "no_decay" not in g["name"]}


def scheduled_lr(optimizer: Any, base_lr: float) -> float:
    """`base_lr` as the scheduler has scaled it now (what `learning_rate` means, whatever the groups' lrs)."""
    group = optimizer.param_groups[0]
    return base_lr * group["lr"] / group.get("initial_lr", group["lr"])


# ----------------------------------------------------------------------------------------------- unfreezing


class GradualUnfreezer:
    """ULMFiT gradual unfreezing: at epoch e (1-based) the head, the rest of the body and the top e layers train;
    the embeddings join at epoch L+1. Parameters frozen when it is made (model.freeze_*) stay frozen.

    Frozen parameters keep their optimiser group but get no gradient, so AdamW neither updates nor decays them
    and creates their state only when they first train.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lmap = layer_map(model)
        _require_layers(self.lmap, "train.gradual_unfreezing")
        self.allowed = {name for name, p in model.named_parameters() if p.requires_grad}

    def lowest_depth(self, epoch: int) -> int:
        """Smallest depth that trains at this epoch (0 = embeddings too)."""
        return max(0, self.lmap.top - epoch)

    def apply(self, epoch: int) -> dict[str, int]:
        """Set requires_grad for `epoch`; returns how many layers train and whether the embeddings do."""
        if epoch < 1:
            raise ValueError(f"epochs count from 1 (got {epoch})")
        lowest = self.lowest_depth(epoch)
        for name, p in self.model.named_parameters():
            trains = name in self.allowed and (name in self.lmap.head or self.lmap.depth[name] >= lowest)
            p.requires_grad_(trains)
        return {
            "unfrozen_layers": min(epoch, self.lmap.num_layers),
            "embeddings_unfrozen": int(lowest == 0),
            "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        }


# ----------------------------------------------------------------------------------------------- re-initialising


def reinit_top_layers(model: Any, n: int) -> list[str]:
    """Fresh weights for the body's pooler (when it has one) and the top n layers; returns what was reset.

    Linear/Embedding weights ~ N(0, config.initializer_range), biases 0, norms 1/0 (the BERT initialisation);
    other modules use their own reset_parameters(). Uses torch's global RNG, so set the seed first.
    """
    import torch

    if n <= 0:
        return []
    lmap = layer_map(model)
    _require_layers(lmap, f"model.reinit_top_layers={n}")
    if n > lmap.num_layers:
        raise ModelLoadError(f"model.reinit_top_layers={n} but the model has {lmap.num_layers} layers")
    body = model_body(model)
    std = float(getattr(body.config, "initializer_range", 0.02) or 0.02)
    layers = find_layers(body)
    modules: list[tuple[str, Any]] = [(lmap.layer_names[i], layers[i]) for i in range(len(layers) - n, len(layers))]
    pooler = getattr(body, "pooler", None)
    if isinstance(pooler, torch.nn.Module) and any(True for _ in pooler.parameters()):
        modules.append(("pooler", pooler))
    if any(not p.requires_grad for _, m in modules for p in m.parameters()):
        raise ModelLoadError(
            f"model.reinit_top_layers={n} would re-initialise layers that model.freeze_layers/train_last_layers "
            "freeze (fresh weights must train)"
        )
    with torch.no_grad():
        for _, top in modules:
            for module in top.modules():
                weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
                if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                    module.weight.normal_(0.0, std)
                    if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                        module.weight[module.padding_idx].zero_()
                elif "norm" in type(module).__name__.lower():
                    if isinstance(weight, torch.Tensor):
                        weight.fill_(1.0)
                elif hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
                    module.reset_parameters()  # type: ignore[operator]
                    continue
                if isinstance(bias, torch.Tensor):
                    bias.zero_()
    return [name for name, _ in modules]


# ----------------------------------------------------------------------------------------------- recipes

Recipe = Literal["default", "little_data"]

# The little-data recipe (benchmarks/little_data.py, 500 stratified SST-2 rows, bundled MiniLM-L6, results in
# benchmarks/results/little_data.json). Measured: a lower base rate (3e-5, LLRD 0.9, 8 epochs) still sat at 0.82
# validation macro-F1 after 5 epochs, so the base rate stays at 5e-5 and only the layers below the top get less
# (LLRD 0.9: embeddings at 0.48x); the new head trains at 1e-3. Re-initialising top layers was not measured on
# real data (too slow on the shared CPU), so it stays off (0).
# Only fields the user left unset are changed (pydantic's model_fields_set): a value in params.yaml or --set wins.
LITTLE_DATA: dict[str, dict[str, Any]] = {
    "train": {
        "epochs": 6,
        "early_stopping_patience": 3,
        "learning_rate": 5e-5,
        "head_learning_rate": 1e-3,
        "layer_lr_decay": 0.9,
        "warmup_ratio": 0.1,
    },
    "model": {"reinit_top_layers": 0},
}


@dataclass(frozen=True)
class RecipeChoice:
    """The configs to train with, which recipe made them and why (for a log line and an MLflow tag)."""

    train: TrainConfig
    model: ModelConfig
    recipe: Recipe
    reason: str
    applied: dict[str, Any]  # "section.key" -> value the recipe set
    kept: dict[str, Any]  # "section.key" -> user's value the recipe left alone


def _with_recipe(cfg: Any, section: str, values: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    user_set = cfg.model_fields_set
    changes = {k: v for k, v in values.items() if k not in user_set}
    kept = {f"{section}.{k}": getattr(cfg, k) for k in values if k in user_set}
    if not changes:
        return cfg, {}, kept
    # Validated rebuild from what the user set plus the recipe's values; the recipe's keys count as set, so
    # resolving twice changes nothing more.
    rebuilt = type(cfg).model_validate({**cfg.model_dump(include=user_set), **changes})
    return rebuilt, {f"{section}.{k}": v for k, v in changes.items()}, kept


def resolve_recipe(train_cfg: TrainConfig, model_cfg: ModelConfig, train_rows: int) -> RecipeChoice:
    """Pick the recipe (`auto`: little_data below `train.little_data_rows` training rows) and apply it."""
    threshold = train_cfg.little_data_rows
    if train_cfg.recipe == "auto":
        recipe: Recipe = "little_data" if train_rows < threshold else "default"
        sign = "<" if recipe == "little_data" else ">="
        reason = f"train.recipe=auto: {train_rows} training rows {sign} train.little_data_rows={threshold}"
    else:
        recipe = train_cfg.recipe
        reason = f"train.recipe={recipe} set in params ({train_rows} training rows)"
    if recipe == "default":
        return RecipeChoice(train_cfg, model_cfg, recipe, reason, {}, {})
    new_train, applied_train, kept_train = _with_recipe(train_cfg, "train", LITTLE_DATA["train"])
    new_model, applied_model, kept_model = _with_recipe(model_cfg, "model", LITTLE_DATA["model"])
    applied = {**applied_train, **applied_model}
    kept = {**kept_train, **kept_model}
    if kept:
        reason += "; kept from params: " + ", ".join(f"{k}={v}" for k, v in kept.items())
    return RecipeChoice(new_train, new_model, recipe, reason, applied, kept)
