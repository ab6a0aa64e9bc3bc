"""Activations at the query word's last token, computed on a shared prefix's key/value cache, and
the model's own ICL answers (the task's sanity check).

Shared path: the prefix runs once through the truncated forward (layers 0..layer only, no
unembedding) with a DynamicCache that the layers fill; each batch of suffixes then runs on a copy
of that cache repeated over the batch, right-padded, with an attention mask covering prefix and
suffix. Causal attention makes a query's activations independent of the other rows and of the
padding after it, so the result equals the full prompt's activations up to floating-point
reassociation (tested against full_prompt_activations). Unshared prompts (see prompts.py) run
whole, without the cache.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from transformers import DynamicCache

from llm.absorption.prompts import PromptGroup, full_prompts
from llm.models import LoadedModel, activations, cache_keyword


def _pad_id(model: LoadedModel) -> int:
    pad = getattr(model.tokenizer, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def _padded(rows: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and attention mask (B, T)."""
    width = max(len(r) for r in rows)
    ids_BT = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids_BT[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask_BT[b, : len(row)] = 1
    return ids_BT, mask_BT


def _batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _by_length(rows: tuple[tuple[int, ...], ...]) -> list[int]:
    """Row indices sorted by length (less padding per batch), ties in original order."""
    return sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))


def prefix_cache(
    model: LoadedModel, prefix_ids: tuple[int, ...], layer: int, hook: str
) -> DynamicCache:
    """Keys and values of the prefix for the layers below the hook point (truncated forward)."""
    cache = DynamicCache(config=model.model.config)
    ids_1T = torch.tensor([prefix_ids], dtype=torch.long)
    activations(model, ids_1T, torch.ones_like(ids_1T), layer, hook, past_key_values=cache)
    return cache


def query_activations(
    model: LoadedModel,
    groups: list[PromptGroup],
    n_queries: int,
    layer: int,
    hook: str = "resid_post",
    batch_size: int = 64,
) -> torch.Tensor:
    """Activations (n_queries, d_model), float32 on the CPU, at each query word's last token."""
    acts_ND = torch.full((n_queries, model.d_model), float("nan"))
    pad_id = _pad_id(model)
    for group in groups:
        if group.queries:
            cache = prefix_cache(model, group.prefix_ids, layer, hook)
            n_prefix = len(group.prefix_ids)
            for rows in _batches(_by_length(group.suffix_ids), batch_size):
                ids_BT, mask_BT = _padded([group.suffix_ids[i] for i in rows], pad_id)
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(rows))
                mask_BT = torch.cat(
                    [torch.ones(len(rows), n_prefix, dtype=torch.long), mask_BT], dim=1
                )
                acts_BTD = activations(
                    model, ids_BT, mask_BT, layer, hook, past_key_values=batch_cache
                )
                positions = torch.tensor(
                    [group.word_positions[i] for i in rows], device=acts_BTD.device
                )
                picked = acts_BTD[torch.arange(len(rows), device=acts_BTD.device), positions]
                acts_ND[[group.queries[i] for i in rows]] = picked.float().cpu()
        unshared = [
            (q, ids, p)
            for q, ids, p in zip(
                group.unshared_queries,
                group.unshared_ids,
                group.unshared_positions,
                strict=True,
            )
        ]
        _run_whole(model, unshared, layer, hook, batch_size, acts_ND)
    if torch.isnan(acts_ND).any():
        raise ValueError("the prompt groups do not cover every query")
    return acts_ND


def full_prompt_activations(
    model: LoadedModel,
    groups: list[PromptGroup],
    n_queries: int,
    layer: int,
    hook: str = "resid_post",
    batch_size: int = 64,
) -> torch.Tensor:
    """The same activations from whole prompts, no cache: the reference the shared path equals."""
    acts_ND = torch.full((n_queries, model.d_model), float("nan"))
    for group in groups:
        _run_whole(model, full_prompts(group), layer, hook, batch_size, acts_ND)
    return acts_ND


def _run_whole(
    model: LoadedModel,
    prompts: list[tuple[int, tuple[int, ...], int]],
    layer: int,
    hook: str,
    batch_size: int,
    acts_ND: torch.Tensor,
) -> None:
    pad_id = _pad_id(model)
    for rows in _batches(_by_length(tuple(ids for _, ids, _ in prompts)), batch_size):
        ids_BT, mask_BT = _padded([prompts[i][1] for i in rows], pad_id)
        acts_BTD = activations(model, ids_BT, mask_BT, layer, hook)
        positions = torch.tensor([prompts[i][2] for i in rows], device=acts_BTD.device)
        rows_B = torch.arange(len(rows), device=acts_BTD.device)
        acts_ND[[prompts[i][0] for i in rows]] = acts_BTD[rows_B, positions].float().cpu()


@torch.no_grad()
def icl_answers(
    model: LoadedModel, groups: list[PromptGroup], n_queries: int, batch_size: int = 64
) -> torch.Tensor:
    """The model's greedy next token (n_queries,) after each whole prompt (full forward with
    unembedding, on the prefix cache); -1 for queries not in the groups."""
    base = model.model.base_model
    answers_N = torch.full((n_queries,), -1, dtype=torch.long)
    pad_id = _pad_id(model)
    for group in groups:
        prompts = full_prompts(group)
        if not prompts:
            continue
        cache = DynamicCache(config=model.model.config)
        prefix_1T = torch.tensor([group.prefix_ids], dtype=torch.long, device=model.device)
        keyword = cache_keyword(base)
        base(input_ids=prefix_1T, use_cache=True, **{keyword: cache})
        n_prefix = len(group.prefix_ids)
        for rows in _batches(list(range(len(prompts))), batch_size):
            # Shared prompts start with the prefix ids; unshared ones too, up to the boundary
            # merge, so they run whole on an empty cache.
            for shared, chosen in (
                (True, [i for i in rows if prompts[i][1][:n_prefix] == group.prefix_ids]),
                (False, [i for i in rows if prompts[i][1][:n_prefix] != group.prefix_ids]),
            ):
                if not chosen:
                    continue
                skip = n_prefix if shared else 0
                ids_BT, mask_BT = _padded([prompts[i][1][skip:] for i in chosen], pad_id)
                batch_cache = None
                if shared:
                    batch_cache = copy.deepcopy(cache)
                    batch_cache.batch_repeat_interleave(len(chosen))
                    mask_BT = torch.cat(
                        [torch.ones(len(chosen), n_prefix, dtype=torch.long), mask_BT], dim=1
                    )
                hidden_BTD = base(
                    input_ids=ids_BT.to(model.device),
                    attention_mask=mask_BT.to(model.device),
                    use_cache=batch_cache is not None,
                    **{keyword: batch_cache},
                ).last_hidden_state
                last = torch.tensor(
                    [len(prompts[i][1]) - skip - 1 for i in chosen], device=model.device
                )
                rows_B = torch.arange(len(chosen), device=model.device)
                logits_BV = model.model.lm_head(hidden_BTD[rows_B, last])
                answers_N[[prompts[i][0] for i in chosen]] = logits_BV.argmax(-1).cpu()
    return answers_N
