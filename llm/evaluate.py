"""Evaluating SAEs on a language model: reconstruction metrics on held-out activations, and the
downstream cost of splicing the SAE into the model's forward pass (CE loss recovered, KL).

Splicing: a forward hook at the SAE's hook point replaces the activations of the positions the
SAE was trained on (the kept positions: no BOS, separators or padding; BOS activations are
outliers no SAE is trained to reconstruct) by the SAE's reconstruction, and the full forward
runs on. Zero ablation replaces them by zeros instead.

    CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)
    KL = mean over predicted positions of KL(p_clean || p_sae)

Losses count next-token predictions whose target is a kept position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from llm.corpus import Corpus, TokenBatch, token_batches
from llm.models import LoadedModel, hook_site
from theory.config import require_positive_int
from toymodels.metrics import dead_fraction, l0
from toymodels.sae import SAE


@torch.no_grad()
def reconstruction_metrics(
    sae: SAE, acts: Tensor | Iterable[Tensor], batch_size: int = 4096
) -> list[dict]:
    """Per member, on these activations (in the SAE's input units), in eval mode:
    explained_variance, l0, dead_fraction (never fires on them) and mse (mean ||x - x_hat||^2).

    acts: rows (N, D), or an iterable of (B, D) batches (e.g. llm.training.held_out_batches).
    Only float64 sums are kept across batches, so memory does not grow with N."""
    batches = acts.split(batch_size) if isinstance(acts, Tensor) else acts
    was_training = sae.training
    sae.eval()
    device = sae.W_dec.device
    M, F = sae.n_members, sae.n_latents
    fired_MF = torch.zeros(M, F, dtype=torch.long)
    l0_sum_M = torch.zeros(M, dtype=torch.float64)
    error_sum_M = torch.zeros(M, dtype=torch.float64)
    # sum ||x - mean||^2 = sum ||x - shift||^2 - N ||mean - shift||^2, shifted by the first
    # batch's mean so that the subtraction keeps its digits on activations with a large mean.
    shift_D = centred_sum_D = None
    centred_square_sum, n_rows = 0.0, 0
    for x_BD in batches:
        x64_BD = x_BD.double()
        if shift_D is None:
            shift_D = x64_BD.mean(0)
            centred_sum_D = torch.zeros_like(shift_D)
        centred_BD = x64_BD - shift_D
        centred_sum_D += centred_BD.sum(0)
        centred_square_sum += float(centred_BD.square().sum())
        n_rows += len(x_BD)
        codes_MBF = sae.encode(x_BD.to(device, sae.W_dec.dtype))
        x_hat_MBD = sae.decode(codes_MBF).double().cpu()
        error_sum_M += (x64_BD - x_hat_MBD).square().sum((1, 2))
        fired_MF += (codes_MBF != 0).sum(1).cpu()
        for m in range(M):
            l0_sum_M[m] += l0(codes_MBF[m]) * len(x_BD)
    sae.train(was_training)
    if n_rows == 0:
        raise ValueError("no activations to evaluate the SAE on")
    total = centred_square_sum - float(centred_sum_D.square().sum()) / n_rows
    if total <= 0:
        raise ValueError("x has zero variance; explained variance is undefined")
    results = []
    for m in range(M):
        active = sae.latent_mask[m].cpu()
        results.append(
            {
                "explained_variance": float(1 - error_sum_M[m] / total),
                "l0": float(l0_sum_M[m] / n_rows),
                "dead_fraction": dead_fraction(fired_MF[m][active]),
                "mse": float(error_sum_M[m] / n_rows),
            }
        )
    return results


def _replacing_hook(
    site: nn.Module, read_input: bool, replace: Callable[[Tensor], Tensor]
) -> torch.utils.hooks.RemovableHandle:
    if read_input:

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (replace(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replace(kwargs["hidden_states"])}

        return site.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        if isinstance(output, tuple):
            return (replace(output[0]), *output[1:])
        return replace(output)

    return site.register_forward_hook(hook)


@torch.no_grad()
def splice_metrics(
    model: LoadedModel,
    sae: SAE,
    corpus: Corpus,
    layer: int,
    hook: str = "resid_post",
    n_batches: int = 4,
    batch_size: int = 4,
    context_length: int = 128,
    skip_tokens: int = 0,
) -> dict:
    """CE losses clean / with the SAE spliced in / zero-ablated, CE recovered and KL.

    `sae` is an M = 1 SAE taking raw activations (as loaded from an SAE file). The text is the
    corpus' windows after the first `skip_tokens` kept positions (an activation cache's tokens,
    so the evaluation text is held out from training).
    """
    if sae.n_members != 1:
        raise ValueError(f"splicing needs one SAE (M = 1), got a stack of {sae.n_members}")
    require_positive_int("n_batches", n_batches)
    sae = sae.to(model.device).eval()
    site, read_input = hook_site(model.layers[layer], hook)
    keep = {}

    def with_sae(acts_BTD: Tensor) -> Tensor:
        rows_ND = acts_BTD[keep["BT"]].to(sae.W_dec.dtype)
        spliced_BTD = acts_BTD.clone()
        spliced_BTD[keep["BT"]] = sae(rows_ND)[0].to(acts_BTD.dtype)
        return spliced_BTD

    def zeroed(acts_BTD: Tensor) -> Tensor:
        return acts_BTD.masked_fill(keep["BT"][..., None], 0.0)

    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "kl": 0.0}
    n_predictions, seen, used = 0, 0, 0
    for batch in token_batches(model.tokenizer, corpus, context_length, batch_size):
        first_kept = seen
        seen += int(batch.keep_BT.sum())
        if first_kept < skip_tokens:  # the batch holds cached (training) tokens
            continue
        keep["BT"] = batch.keep_BT.to(model.device)
        counted_BT = keep["BT"][:, 1:]  # predictions whose target is a kept position
        targets_N1 = batch.input_ids_BT.to(model.device)[:, 1:][counted_BT][:, None]

        def log_probs(
            replace: Callable[[Tensor], Tensor] | None,
            batch: TokenBatch = batch,
            counted_BT: Tensor = counted_BT,
        ) -> Tensor:
            handle = None if replace is None else _replacing_hook(site, read_input, replace)
            try:
                logits = model.model(
                    input_ids=batch.input_ids_BT.to(model.device),
                    attention_mask=batch.attention_mask_BT.to(model.device),
                    use_cache=False,
                ).logits
            finally:
                if handle is not None:
                    handle.remove()
            return logits[:, :-1][counted_BT].float().log_softmax(-1)

        clean_NV = log_probs(None)
        sums["ce_clean"] -= float(clean_NV.gather(1, targets_N1).sum())
        spliced_NV = log_probs(with_sae)
        sums["ce_sae"] -= float(spliced_NV.gather(1, targets_N1).sum())
        sums["kl"] += float((clean_NV.exp() * (clean_NV - spliced_NV)).sum())
        del spliced_NV
        sums["ce_zero"] -= float(log_probs(zeroed).gather(1, targets_N1).sum())
        n_predictions += len(targets_N1)
        used += 1
        if used == n_batches:
            break
    if n_predictions == 0:
        raise ValueError(
            f"no evaluation text is left after the first {skip_tokens} tokens of "
            f"corpus {corpus.name!r}"
        )
    metrics = {name: value / n_predictions for name, value in sums.items()}
    denominator = metrics["ce_zero"] - metrics["ce_clean"]
    metrics["ce_loss_recovered"] = (
        (metrics["ce_zero"] - metrics["ce_sae"]) / denominator if denominator != 0 else float("nan")
    )
    metrics["n_predictions"] = n_predictions
    metrics["n_batches"] = used
    return metrics
