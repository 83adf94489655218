"""Training fast path: the top encoder layer computes only position 0, the one the classification head reads.

A BERT-style sequence classifier reads the last layer's output at the first position alone (BERT's pooler,
RoBERTa's and ELECTRA's classification heads all take `[:, 0]`). Every other position of the top layer's output
is computed and thrown away: its query projection, attention output projection and feed-forward block, 83% of
that layer's matrix work, 14% of a 6-layer encoder's. In training mode the patched top layer attends from
position 0 only (keys and values still come from every position, so the result is the same number), which
gives the same loss and gradients as the full layer up to float rounding (tests/unit/test_train.py checks);
dropout masks are drawn for the smaller tensors, so a run with dropout is another draw of the same recipe.

Only the layer instance's `forward` is replaced (no new module: the state dict, checkpoints and the export are
unchanged), and only in training mode: evaluation, prediction and export run the original layer. Applied to
the model types listed in FIRST_TOKEN_HEADS whose layers have the BERT layout with absolute positions; any
other model trains as before.
"""

from __future__ import annotations

from typing import Any

# model_type -> its *ForSequenceClassification head reads only position 0 of the last hidden state
FIRST_TOKEN_HEADS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})


def _bert_layout(layer: Any) -> bool:
    attention = getattr(layer, "attention", None)
    self_attention = getattr(attention, "self", None)
    return all(
        hasattr(obj, name)
        for obj, name in (
            (self_attention, "query"),
            (self_attention, "key"),
            (self_attention, "value"),
            (self_attention, "attention_head_size"),
            (self_attention, "scaling"),
            (self_attention, "dropout"),
            (attention, "output"),
            (layer, "intermediate"),
            (layer, "output"),
        )
    )


def first_token_top_layer(model: Any) -> str | None:
    """Patch the top layer of a supported sequence classifier; returns a description, or None when not applied."""
    from pipelines.finetuning import find_layers, model_body

    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in FIRST_TOKEN_HEADS:
        return None
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_decoder", False):
        return None
    if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa"):  # masks as tensors
        return None
    layers = find_layers(model_body(model))
    if not layers or not _bert_layout(layers[-1]):
        return None
    top = layers[-1]
    top.forward = _first_token_forward(top, top.forward)
    return f"top layer ({len(layers) - 1}) computes position 0 only in training"


def _first_token_forward(layer: Any, full_forward: Any) -> Any:
    import torch.nn.functional as F

    attention = layer.attention.self

    def forward(hidden_states: Any, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not layer.training:
            return full_forward(hidden_states, attention_mask, *args, **kwargs)
        rows, length, _ = hidden_states.shape
        first = hidden_states[:, :1]
        size = attention.attention_head_size
        query = attention.query(first).view(rows, 1, -1, size).transpose(1, 2)
        key = attention.key(hidden_states).view(rows, length, -1, size).transpose(1, 2)
        value = attention.value(hidden_states).view(rows, length, -1, size).transpose(1, 2)
        mask = attention_mask[:, :, :1, :] if attention_mask is not None else None  # position 0's row
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=attention.dropout.p, scale=attention.scaling
        )
        attended = layer.attention.output(context.transpose(1, 2).reshape(rows, 1, -1), first)
        return layer.output(layer.intermediate(attended), attended)  # [rows, 1, hidden]: position 0 only

    return forward
