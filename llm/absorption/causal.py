"""The paper's causal absorption metric (sae-spelling): integrated-gradients attribution of the
model's first-letter answer to the SAE latents at the query word's last token.

At the hook point and the word position only, the activation x is replaced by its SAE
decomposition x = W_dec^T f + b_dec + e (e = x - x_hat, the error term, so the clean forward is
unchanged), and latents and error are scaled together by s in {1, 5/6, ..., 1/6} (the clean
input included, the zero baseline not; b_dec stays). The forward runs to the logits, on the
prompt prefix's key/value cache (all layers), the 6 scales as one batch. With
m = logit(correct answer) - mean logit(the 25 other answers) at the last position,

    score_j = mean over s of dm/df_j (at s f) x (0 - f_j),   likewise score_error for e,

so by completeness the scores sum to about m(baseline) - m(clean). Answers: "consistent" takes
" " + uppercase letter for all 26 (the prompt's own answer format); "paper" takes sae-spelling's
lowercase letter without a space as the correct answer and " B".." Z" style answers as the others.

Candidates for letter L: probe true positives (on the absorption prompt) with every main latent
< 1e-8 that the k-sparse probe calls negative; at most max_per_letter of them, drawn seeded. A
candidate is absorbed when the most negative latent score is <= 0, exceeds the second most
negative in magnitude by at least 1.0, and its latent's decoder has cosine >= 0.025 with the
probe direction. Rate = absorbed x (candidates / sampled) / probe true positives. It only means
something at layers where the letter information still sits at the word position.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from transformers import DynamicCache

from llm.absorption.prompts import PromptGroup, full_prompts
from llm.absorption.vocabulary import LETTERS
from llm.models import LoadedModel, cache_keyword, hook_site
from toymodels.sae import SAE

ANSWER_STYLES = ("consistent", "paper")
N_STEPS = 6
MARGIN = 1.0
LATENT_COSINE = 0.025


class AnswerIds(NamedTuple):
    """Token id of the correct answer per letter (26,), and of each letter as a wrong answer."""

    correct_L: Tensor
    other_L: Tensor


def answer_ids(tokenizer: object, style: str = "consistent") -> AnswerIds:
    if style not in ANSWER_STYLES:
        raise ValueError(f"answer style {style!r} is not supported; allowed: {ANSWER_STYLES}")

    def first_id(text: str) -> int:
        return tokenizer(text, add_special_tokens=False)["input_ids"][0]

    spaced = torch.tensor([first_id(" " + letter) for letter in LETTERS])
    if style == "consistent":
        return AnswerIds(spaced, spaced)
    return AnswerIds(torch.tensor([first_id(letter.lower()) for letter in LETTERS]), spaced)


class Attribution(NamedTuple):
    """Latent scores (F,), the error term's score, and the metric at each scale (6,)."""

    scores_F: Tensor
    error_score: float
    metric_S: Tensor


def full_prefix_cache(model: LoadedModel, prefix_ids: tuple[int, ...]) -> DynamicCache:
    """Keys and values of the prefix for every layer (the metric needs the logits)."""
    cache = DynamicCache(config=model.model.config)
    ids_1T = torch.tensor([prefix_ids], dtype=torch.long, device=model.device)
    with torch.no_grad():
        model.model.base_model(
            input_ids=ids_1T, use_cache=True, **{cache_keyword(model.model.base_model): cache}
        )
    return cache


class CausalSettings(NamedTuple):
    """What the causal (integrated-gradients) metric needs besides the SAE: the model, the hook
    point, the absorption prompts of the test words (query q = test word q) and the answer
    tokens."""

    model: LoadedModel
    groups: list[PromptGroup]
    layer: int
    hook: str
    answers: AnswerIds
    max_per_letter: int = 200


def attribute(
    settings: CausalSettings,
    sae: SAE,
    cache: DynamicCache | None,
    ids: tuple[int, ...],
    position: int,
    letter: int,
    n_steps: int = N_STEPS,
) -> Attribution:
    """Integrated-gradients scores of one prompt (module docstring). `ids` continue `cache`
    (None: they are the whole prompt); `position` indexes the word's last token in `ids`."""
    model, answers = settings.model, settings.answers
    site, read_input = hook_site(model.layers[settings.layer], settings.hook)
    W_dec_FD, b_dec_D = sae.W_dec[0].detach(), sae.b_dec[0].detach()
    scales_S = 1 - torch.arange(n_steps, dtype=torch.float32, device=W_dec_FD.device) / n_steps
    state: dict[str, Tensor] = {}

    def splice(h_STD: Tensor) -> Tensor:
        # The SAE may live on another device than the model (evaluate keeps it on the CPU).
        x_D = h_STD[0, position].detach().float().to(W_dec_FD.device)
        codes_F = sae.encode(x_D[None])[0, 0].detach()
        error_D = x_D - (codes_F @ W_dec_FD + b_dec_D)
        latents_SF = (scales_S[:, None] * codes_F).requires_grad_()
        error_SD = (scales_S[:, None] * error_D).requires_grad_()
        state.update(codes_F=codes_F, error_D=error_D, latents_SF=latents_SF, error_SD=error_SD)
        spliced_SD = latents_SF @ W_dec_FD + b_dec_D + error_SD
        h_STD = h_STD.clone()
        h_STD[:, position] = spliced_SD.to(h_STD.device, h_STD.dtype)
        return h_STD

    def on_output(module: nn.Module, args: tuple, output: object) -> object:
        if isinstance(output, tuple):
            return (splice(output[0]), *output[1:])
        return splice(output)

    def on_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (splice(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": splice(kwargs["hidden_states"])}

    if read_input:
        handle = site.register_forward_pre_hook(on_input, with_kwargs=True)
    else:
        handle = site.register_forward_hook(on_output)
    ids_ST = torch.tensor([ids] * n_steps, dtype=torch.long, device=model.device)
    kwargs = {}
    if cache is not None:
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(n_steps)
        kwargs = {cache_keyword(model.model.base_model): batch_cache, "use_cache": True}
    try:
        with torch.enable_grad():
            logits_SV = model.model(input_ids=ids_ST, logits_to_keep=1, **kwargs).logits[:, -1]
            others = [j for j in range(len(LETTERS)) if j != letter]
            metric_S = (
                (
                    logits_SV[:, int(answers.correct_L[letter])]
                    - logits_SV[:, answers.other_L[others].to(logits_SV.device)].mean(-1)
                )
                .float()
                .to(W_dec_FD.device)
            )
            grad_SF, grad_SD = torch.autograd.grad(
                metric_S.sum(), [state["latents_SF"], state["error_SD"]]
            )
    finally:
        handle.remove()
    scores_F = grad_SF.mean(0) * (0 - state["codes_F"])
    error_score = float((grad_SD.mean(0) * (0 - state["error_D"])).sum())
    return Attribution(scores_F, error_score, metric_S.detach())


def is_absorbed(scores_F: Tensor, cosines_F: Tensor) -> bool:
    """The most negative score is <= 0, beats the second by >= 1.0 in magnitude, and its
    latent's decoder has cosine >= 0.025 with the probe."""
    lowest = torch.topk(scores_F, min(2, len(scores_F)), largest=False)
    first = float(lowest.values[0])
    second = float(lowest.values[1]) if len(scores_F) > 1 else 0.0
    return (
        first <= 0
        and abs(first) - abs(second) >= MARGIN
        and float(cosines_F[lowest.indices[0]]) >= LATENT_COSINE
    )


class CausalLetter(NamedTuple):
    n_candidates: int
    n_sampled: int
    n_absorbed: int
    rate: float


def causal_absorption(
    settings: CausalSettings,
    sae: SAE,
    candidates: list[int],
    n_true_positives: int,
    letter: int,
    cosines_F: Tensor,
    seed: int = 0,
) -> CausalLetter:
    """One letter's causal absorption rate. `candidates` are query indices of settings.groups."""
    model, groups, max_per_letter = settings.model, settings.groups, settings.max_per_letter
    chosen = list(candidates)
    if len(chosen) > max_per_letter:
        rng = np.random.default_rng(seed + letter)
        chosen = sorted(rng.choice(chosen, max_per_letter, replace=False).tolist())
    wanted = set(chosen)
    n_absorbed = 0
    for group in groups:
        n_prefix = len(group.prefix_ids)
        cache = None
        for q, ids, position in full_prompts(group):
            if q not in wanted:
                continue
            shared = ids[:n_prefix] == group.prefix_ids and position >= n_prefix
            if shared and cache is None:
                cache = full_prefix_cache(model, group.prefix_ids)
            attribution = attribute(
                settings,
                sae,
                cache if shared else None,
                ids[n_prefix:] if shared else ids,
                position - n_prefix if shared else position,
                letter,
            )
            n_absorbed += is_absorbed(attribution.scores_F, cosines_F)
    n_sampled = len(chosen)
    rate = (
        n_absorbed * (len(candidates) / n_sampled) / n_true_positives
        if n_sampled and n_true_positives
        else 0.0
    )
    return CausalLetter(len(candidates), n_sampled, n_absorbed, rate)
