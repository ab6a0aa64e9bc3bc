"""The SAE base class: a stack of M independent SAEs held as batched parameters.

Every SAE in the toolkit is a stack, so a sweep trains as one vectorised model (a single SAE is
M = 1). Shapes: W_enc (M, D, F), b_enc (M, F), W_dec (M, F, D), b_dec (M, D) with D = d_in and
F = n_latents. Members may be narrower than F: a boolean latent mask (M, F) switches latents off
(masked latents never fire and get no gradient), so widths 1..4 share one stack.

    pre = W_enc^T (x - b_dec) + b_enc          (decoder bias applied to the input, as in SAELens)
    h = activation(pre)                         (one subclass per architecture)
    x_hat = W_dec^T h + b_dec
    loss_m = reconstruction_m + sparsity_m + aux_m,  total = sum_m loss_m

Summing member losses makes each member's gradient exactly the one it would get alone, and Adam
is elementwise, so a stack trains every member exactly as separate runs would.
Every parameter and buffer carries the member axis first, which is what select_members relies on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from theory.config import require_number, require_positive_int


def per_member(value: float | Sequence[float], n_members: int, what: str) -> tuple[float, ...]:
    """A hyperparameter given once or once per member, as n_members numbers >= 0."""
    values = [value] * n_members if isinstance(value, int | float) else list(value)
    if len(values) != n_members:
        raise ValueError(
            f"{what} needs 1 or {n_members} values (one per member), got {len(values)}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{what} values must be finite numbers >= 0, got {v!r}")
    return tuple(float(v) for v in values)


def integer_per_member(value: int | Sequence[int], n_members: int, what: str) -> tuple[int, ...]:
    """An integer hyperparameter >= 1, given once or once per member."""
    values = per_member(value, n_members, what)
    if any(v != int(v) or v < 1 for v in values):
        raise ValueError(f"{what} values must be integers >= 1, got {list(values)}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class SAEConfig:
    """What every architecture shares: the stack's shape, initialisation, dead latents, tying.

    Subclasses (one per architecture, in the architecture's file) add their sparsity
    hyperparameters; per-member ones accept one value or one per member and are stored as
    tuples of length n_members."""

    d_in: int
    """Input dimension D (d_model on an LLM)."""
    n_latents: int
    """Latents F of the widest member."""
    n_members: int = 1
    """SAEs M in the stack (trained together, each exactly as alone)."""
    widths: tuple[int, ...] | None = None
    """Each member's width (<= n_latents); default: every member has n_latents."""
    decoder_init_norm: float = 0.1
    """Norm of the random initial decoder rows (the encoder starts as their transpose)."""
    aux_coefficient: float = 0.0
    """Weight of the aux-k loss that revives dead latents (0: off)."""
    aux_k: int | None = None
    """Dead latents used by the aux-k loss per sample (default d_in / 2)."""
    dead_after_samples: int = 1_000_000
    """A latent that has not fired for this many samples is dead."""
    tied: bool = False
    """Encoder = decoder transpose for good (theory's tied SAE)."""
    decoder_bias: bool = True
    """Learn a decoder bias (False: b_dec stays 0, theory's SAE without one)."""

    def __post_init__(self) -> None:
        for name in ("d_in", "n_latents", "n_members"):
            require_positive_int(name, getattr(self, name))
        widths = (self.n_latents,) * self.n_members if self.widths is None else self.widths
        if (
            isinstance(widths, int | float)
            or len(widths) != self.n_members
            or any(
                isinstance(w, bool) or int(w) != w or not 1 <= w <= self.n_latents for w in widths
            )
        ):
            raise ValueError(
                f"widths must be {self.n_members} integers in [1, {self.n_latents}], got {widths!r}"
            )
        self._set("widths", tuple(int(w) for w in widths))
        require_number("decoder_init_norm", self.decoder_init_norm, 0, open_low=True)
        require_number("aux_coefficient", self.aux_coefficient, 0)
        if self.aux_k is not None:
            require_positive_int("aux_k", self.aux_k)
        require_positive_int("dead_after_samples", self.dead_after_samples)

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field in __post_init__ (the config is frozen afterwards)."""
        object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> SAEConfig:
        return dataclasses.replace(self, **changes)


class SAELensExtras(NamedTuple):
    """What an architecture adds to its SAELens file beyond W_enc, b_enc, W_dec, b_dec."""

    tensors: dict[str, Tensor]
    """More weights, over all latents (e.g. a JumpReLU threshold)."""
    cfg: dict[str, Any]
    """SAELens cfg.json entries (e.g. k)."""
    ours: dict[str, Any]
    """Entries kept under the toolkit's own cfg key, read back by load_saelens_extras."""


@dataclass(frozen=True)
class Capabilities:
    """What an architecture supports, declared once on its class (nobody asks hasattr)."""

    fused_loss: bool = False
    """A faster shared-batch loss with the generic path's values and gradients."""
    sparse_path: bool = False
    """Shared-batch training through each sample's k chosen latents only."""
    inference_threshold: bool = False
    """Fires at inference when pre > inference_threshold() (SAELens's JumpReLU form)."""
    relu_codes: bool = False
    """Codes are ReLU(pre), so theory's exact loss describes the SAE."""
    theory_codes: bool = False
    """theory.architectures describes the codes by the architecture's name (TopK ranked by
    contribution, BatchTopK's expected training loss, JumpReLU)."""


class SAE(nn.Module):
    """Base class: parameters, encode/decode, the loss skeleton, dead latents, folding, growing.

    Subclasses set `architecture`, `config_class` (their SAEConfig subclass), `capabilities`,
    implement `activation(pre_MBF)` and usually `sparsity_loss`, and list their per-member
    hyperparameters in `member_hyperparameters` (config fields holding one value per member).
    """

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    capabilities: ClassVar[Capabilities] = Capabilities()
    member_hyperparameters: ClassVar[tuple[str, ...]] = ()
    saelens_architecture: ClassVar[str] = ""  # what SAELens calls it at inference time

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if type(config) is not self.config_class:
            raise ValueError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        M, D, F = config.n_members, config.d_in, config.n_latents
        # Tied initialisation: random decoder rows of norm decoder_init_norm, W_enc = W_dec^T.
        W_dec = rows_of_norm(torch.randn(M, F, D, generator=generator), config.decoder_init_norm)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.transpose(1, 2).clone())
        self.b_enc = nn.Parameter(torch.zeros(M, F))
        self.b_dec = nn.Parameter(torch.zeros(M, D), requires_grad=config.decoder_bias)
        mask = torch.arange(F) < torch.tensor(config.widths)[:, None]
        self.register_buffer("latent_mask", mask)
        self.register_buffer("samples_since_fired", torch.zeros(M, F, dtype=torch.long))
        if config.tied:
            parametrize.register_parametrization(
                self, "W_enc", _Transposed(self.W_dec), unsafe=True
            )
        # Multiplies the sparsity loss; the trainer sets it each step during an L1 warm-up
        # (TrainConfig.l1_warmup_steps) and back to 1 when training ends.
        self.sparsity_scale = 1.0
        # Turns one process's (fired (M, F), rows) into the whole batch's when several processes
        # each hold part of it (split_batches).
        self.batch_firing: Callable[[Tensor, int], tuple[Tensor, int]] | None = None
        self._mask_changed()
        self.register_load_state_dict_post_hook(lambda module, _: module._mask_changed())

    def _mask_changed(self) -> None:
        """Cache whether any latent is masked (a Python bool: no device sync per step)."""
        self._narrow = not bool(self.latent_mask.all())

    # --- shape ---------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    @property
    def n_members(self) -> int:
        return self.config.n_members

    def family_class(self) -> type[SAE]:
        """This SAE's class in the family (tying swaps in a parametrized subclass of it)."""
        cls = type(self)
        return cls.__bases__[0] if parametrize.is_parametrized(self) else cls

    def full_config(self) -> dict[str, Any]:
        """Everything make_sae needs to rebuild this SAE: {"architecture": name, **config}
        (JSON-ready)."""
        return {"architecture": self.architecture, **dataclasses.asdict(self.config)}

    def inference_threshold(self) -> Tensor:
        """(M, F) thresholds in pre-activation units: at inference latent i fires when
        pre_i > threshold_i. Only for architectures with capabilities.inference_threshold."""
        raise ValueError(f"{self.architecture} SAEs have no inference threshold")

    # --- SAELens files -------------------------------------------------------------------------
    def saelens_extras(self) -> SAELensExtras:
        """What this architecture adds to a SAELens file of a folded M = 1 SAE."""
        if self.capabilities.inference_threshold:
            return SAELensExtras({"threshold": self.inference_threshold()[0]}, {}, {})
        return SAELensExtras({}, {}, {})

    def load_saelens_extras(self, tensors: dict[str, Tensor], ours: dict[str, Any]) -> None:
        """Read back what saelens_extras wrote (M = 1): its tensors and our own cfg entries."""

    # --- forward -------------------------------------------------------------------------------
    def pre_activations(self, x: Tensor, scale_MF: Tensor | None = None) -> Tensor:
        """W_enc^T (x - b_dec) + b_enc for x (M, B, D) or a shared batch (B, D): (M, B, F),
        times scale_MF (M, F) when given (folded into the weights: a pass over (M, D, F) instead
        of one over (M, B, F)).

        Masked latents get a bias of -inf, so they never fire and pass no gradient back."""
        M, D, F = self.W_enc.shape
        b_enc, W_enc = self.b_enc, self.W_enc
        if scale_MF is not None:
            b_enc, W_enc = b_enc * scale_MF, W_enc * scale_MF[:, None]
        if self._narrow:
            b_enc = b_enc.masked_fill(~self.latent_mask, float("-inf"))
        if x.shape[-1] != D or not (x.dim() == 2 or (x.dim() == 3 and x.shape[0] == M)):
            raise ValueError(f"inputs must be (B, {D}) or ({M}, B, {D}), got {tuple(x.shape)}")
        if x.dim() == 2:
            # A shared batch: one (B, D) x (D, M F) matmul instead of M small ones.
            bias_MF = b_enc - torch.bmm(self.b_dec[:, None], W_enc)[:, 0]
            W_enc_DK = W_enc.transpose(0, 1).reshape(D, M * F)
            pre_BK = torch.addmm(bias_MF.reshape(M * F), x, W_enc_DK)
            # Member-major copy: every later (M, B, F) tensor then shares one layout, and
            # elementwise ops on mixed layouts cost several times more than this copy.
            return pre_BK.view(-1, M, F).transpose(0, 1).contiguous()
        return torch.baddbmm(b_enc[:, None], x - self.b_dec[:, None], W_enc)

    def activation(self, pre_MBF: Tensor) -> Tensor:
        """Codes from pre-activations; masked latents arrive as -inf and must give 0."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Codes (M, B, F) of inputs (M, B, D) or a shared batch (B, D)."""
        return self.activation(self.pre_activations(x))

    def decode(self, codes_MBF: Tensor) -> Tensor:
        """Reconstructions (M, B, D)."""
        return torch.baddbmm(self.b_dec[:, None], codes_MBF, self.W_dec)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # --- loss ----------------------------------------------------------------------------------
    def squared_error(self, x: Tensor, codes_MBF: Tensor) -> Tensor:
        """||x - x_hat||^2 per member and sample: (M, B)."""
        M, F, D = self.W_dec.shape
        if x.dim() == 3 or F > D:
            return (x - self.decode(codes_MBF)).square().sum(-1)
        # A shared batch with narrow members: expand ||(x - b) - W^T h||^2 so that no (M, B, D)
        # tensor is formed. Memory traffic, not arithmetic, limits narrow stacks, and the terms
        # left are matmuls over the shared batch and (M, B, F) products.
        twice_W_dec_DK = 2 * self.W_dec.permute(2, 0, 1).reshape(D, M * F)
        twice_Wb_MF = 2 * torch.bmm(self.W_dec, self.b_dec[..., None])[..., 0]
        twice_projection_BK = torch.addmm(-twice_Wb_MF.reshape(M * F), x, twice_W_dec_DK)
        twice_projection_MBF = twice_projection_BK.view(-1, M, F).transpose(0, 1).contiguous()
        gram_MFF = torch.bmm(self.W_dec, self.W_dec.transpose(1, 2))
        # 2 W (x - b) - G h, so that ||x - x_hat||^2 = ||x - b||^2 - h . explained
        explained = torch.baddbmm(twice_projection_MBF, codes_MBF, gram_MFF, alpha=-1)
        centred_MB = (x.square().sum(-1)[:, None] - 2 * (x @ self.b_dec.T)).T
        centred_MB = centred_MB + self.b_dec.square().sum(-1)[:, None]  # ||x - b_dec||^2
        return centred_MB - torch.linalg.vecdot(codes_MBF, explained)

    def reconstruction_loss(self, x: Tensor, codes_MBF: Tensor) -> Tensor:
        """Per-member mean over the batch of ||x - x_hat||^2 summed over dims: (M,)."""
        return self.squared_error(x, codes_MBF).mean(-1)

    def sparsity_loss(self, codes_MBF: Tensor, pre_MBF: Tensor) -> Tensor:
        """Per-member sparsity penalty (M,); none by default (TopK-style SAEs)."""
        return codes_MBF.new_zeros(codes_MBF.shape[0])

    def fused_loss_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """A faster route to (mse (M,), sparsity (M,), code sums over the batch (M, F)) with the
        gradients of the generic path, or None for inputs it does not cover. Only called on
        architectures that declare capabilities.fused_loss."""
        raise NotImplementedError

    def decoder_norms(self) -> Tensor:
        """||W_dec[m, i]||: (M, F)."""
        return self.W_dec.norm(dim=-1)

    def split_batches(self, global_rows: int | None) -> None:
        """Data-parallel training (toymodels.distributed) from now on: this process holds its
        share of every global batch of `global_rows`, and decisions over the batch (which
        latents fired, for the dead-latent counters) are taken over the whole of it; None ends
        it (the process group closes)."""
        from toymodels import distributed

        self.batch_firing = (
            None if global_rows is None else distributed.whole_batch_firing(global_rows)
        )

    def record_firing(self, fired_MF: Tensor, rows: int) -> None:
        """Advance the dead-latent counters past a batch of `rows` samples in which the latents
        fired_MF (M, F) fired."""
        if self.batch_firing is not None:
            fired_MF, rows = self.batch_firing(fired_MF, rows)
        self.samples_since_fired.add_(rows).masked_fill_(fired_MF, 0)

    def dead_latents(self) -> Tensor:
        """(M, F) bool: active latents that have not fired for dead_after_samples samples."""
        return (self.samples_since_fired >= self.config.dead_after_samples) & self.latent_mask

    def aux_loss(self, x: Tensor, codes_MBF: Tensor, pre_MBF: Tensor) -> Tensor:
        """TopK-style aux-k loss: the top aux_k dead latents reconstruct the residual.

        As in OpenAI's TopK SAEs and SAELens: residual e = x - x_hat (no gradient), dead
        latents' ReLU pre-activations (top aux_k per sample) decode e without b_dec,
        loss = mean ||e - e_hat||^2 scaled by min(n_dead / aux_k, 1) and aux_coefficient.
        Zero when nothing is dead."""
        k_aux = self.aux_k()
        dead_MF = self.dead_latents()
        residual = (x - self.decode(codes_MBF)).detach()
        values, index = pre_MBF.masked_fill(~dead_MF[:, None], float("-inf")).topk(k_aux, dim=-1)
        aux_codes = torch.zeros_like(pre_MBF).scatter(-1, index, values.relu())
        error = torch.bmm(aux_codes, self.W_dec) - residual
        scale = (dead_MF.sum(-1) / k_aux).clamp(max=1.0)
        return self.config.aux_coefficient * scale * error.square().sum(-1).mean(-1)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """total (scalar, summed over members) and per-member (M,) mse, sparsity, aux, per_member.

        In training mode this also updates the dead-latent counters."""
        with_aux = self.config.aux_coefficient > 0
        fused = self.fused_loss_terms(x) if self.capabilities.fused_loss and not with_aux else None
        if fused is None:
            pre = self.pre_activations(x)
            codes = self.activation(pre)
            mse = self.reconstruction_loss(x, codes)
            sparsity = self.sparsity_loss(codes, pre)
        else:
            mse, sparsity, code_sums_MF = fused
        if self.sparsity_scale != 1.0:
            sparsity = sparsity * self.sparsity_scale
        if self.training:
            with torch.no_grad():
                # codes are >= 0; a sum is 10x faster than any
                fired_MF = (codes.sum(dim=1) if fused is None else code_sums_MF) > 0
                self.record_firing(fired_MF, x.shape[-2])
        if with_aux:
            aux = self.aux_loss(x, codes, pre)
        else:
            aux = torch.zeros_like(mse)
        per_member = mse + sparsity + aux
        return {
            "total": per_member.sum(),
            "mse": mse,
            "sparsity": sparsity,
            "aux": aux,
            "per_member": per_member,
        }

    # --- transformations -----------------------------------------------------------------------
    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Rescale to unit decoder rows without changing the function (in place).

        Latent i's code is multiplied by ||W_dec[i]|| (its encoder column and b_enc scale up) and
        its decoder row is divided by the same norm. Subclasses with thresholds rescale those."""
        norms = self.decoder_norms()
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        self.W_dec /= norms[..., None]
        self.W_enc *= norms[:, None]
        self.b_enc *= norms
        self._rescale_thresholds(norms)

    def _rescale_thresholds(self, norms_MF: Tensor) -> None:
        """Hook for architectures whose thresholds live in code units."""

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on inputs x * scale take raw x and return raw x_hat (in place).

        pre = W_enc^T (s x - b_dec) + b_enc = (s W_enc)^T (x - b_dec / s) + b_enc, so the codes
        are unchanged; x_hat / s = (W_dec / s)^T h + b_dec / s. Decoder norms shrink by s, so
        thresholds on contributions h_i ||W_dec[i]|| shrink too (_rescale_contributions)."""
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"input scale must be a finite number > 0, got {scale}")
        self.W_enc *= scale
        self.W_dec /= scale
        self.b_dec /= scale
        self._rescale_contributions(1 / scale)

    def _rescale_contributions(self, factor: float) -> None:
        """Hook for architectures whose thresholds live in units of h_i ||W_dec[i]||."""

    @torch.no_grad()
    def init_b_dec(self, x: Tensor, method: str = "geometric_median", iterations: int = 50) -> None:
        """Set b_dec from a batch (B, D) or (M, B, D): "mean", "geometric_median" or "zero"."""
        if method == "zero" or not self.config.decoder_bias:
            self.b_dec.zero_()
            return
        x_MBD = (x if x.dim() == 3 else x[None]).to(self.b_dec)
        if method == "mean":
            centre = x_MBD.mean(dim=1)
        elif method == "geometric_median":
            centre = geometric_median(x_MBD, iterations)
        else:
            raise ValueError(
                f"unknown b_dec init {method!r}; allowed: zero, mean, geometric_median"
            )
        self.b_dec.copy_(centre.expand_as(self.b_dec))

    def _state_into(self, new: SAE, members: Tensor | None = None) -> SAE:
        """Copy this SAE's tensors into `new`: selected members, or into its first F latents."""
        new = new.to(self.W_dec).train(self.training)
        own = self.state_dict()
        with torch.no_grad():
            for key, target in new.state_dict().items():
                source = own[key]
                if members is not None:
                    source = source[members]
                if source.shape == target.shape:
                    target.copy_(source)
                else:  # grown along the latent axis: the old latents come first
                    axis = next(
                        a
                        for a, (s, t) in enumerate(zip(source.shape, target.shape, strict=True))
                        if s != t
                    )
                    target.narrow(axis, 0, source.shape[axis]).copy_(source)
        new._mask_changed()
        return new

    def select_members(self, indices: Sequence[int]) -> SAE:
        """A new SAE stack holding the given members (e.g. one member as an M = 1 SAE)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        if index.numel() == 0 or index.min() < 0 or index.max() >= self.n_members:
            raise ValueError(
                f"member indices must be in [0, {self.n_members}), got {list(indices)}"
            )
        per_member = {
            key: tuple(getattr(self.config, key)[i] for i in index.tolist())
            for key in ("widths", *self.member_hyperparameters)
        }
        config = self.config.replace(n_members=len(index), **per_member)
        return self._state_into(self.family_class()(config), members=index.to(self.W_dec.device))

    def _grown_config(self, n_new: int) -> dict[str, Any]:
        """The config changes that add n_new latents to every member."""
        return {
            "n_latents": self.n_latents + n_new,
            "widths": tuple(w + n_new for w in self.config.widths),
        }

    def aux_k(self) -> int:
        """Dead latents the aux-k loss uses per sample."""
        return min(self.config.aux_k or max(self.d_in // 2, 1), self.n_latents)

    def add_latents(
        self, n_new: int, scale: float = 0.1, generator: torch.Generator | None = None
    ) -> SAE:
        """A new SAE with n_new extra latents after the existing ones (hedging-degree protocol).

        Each new latent gets a random unit vector times `scale` as both its decoder row and its
        encoder column, and b_enc 0; every other tensor is copied unchanged."""
        require_positive_int("n_new", n_new)
        new = self._state_into(
            self.family_class()(self.config.replace(**self._grown_config(n_new)))
        )
        M, F = self.n_members, self.n_latents
        directions = rows_of_norm(torch.randn(M, n_new, self.d_in, generator=generator), scale)
        directions = directions.to(self.W_dec)
        with torch.no_grad():
            new.W_dec[:, F:] = directions
            if not self.config.tied:  # a tied encoder follows the decoder
                new.W_enc[:, :, F:] = directions.transpose(1, 2)
            new.b_enc[:, F:] = 0
            new.latent_mask[:, F:] = True
            new.samples_since_fired[:, F:] = 0
        new._mask_changed()
        return new


class _Transposed(nn.Module):
    """W_enc = W_dec^T (the parametrization of tied SAEs): gradients reach W_dec through both."""

    def __init__(self, decoder: nn.Parameter) -> None:
        super().__init__()
        self._decoder = [decoder]  # held in a list, not as a submodule parameter: no cycle

    def forward(self, _unused: Tensor) -> Tensor:
        return self._decoder[0].transpose(1, 2)


def rows_of_norm(rows: Tensor, norm: float = 1.0) -> Tensor:
    """Rows rescaled to the given norm along the last axis (zero rows stay zero)."""
    norms = rows.norm(dim=-1, keepdim=True)
    return rows * (norm / torch.where(norms > 0, norms, torch.ones_like(norms)))


def geometric_median(x_MBD: Tensor, iterations: int = 50, eps: float = 1e-8) -> Tensor:
    """Weiszfeld's iteration per member: the point minimising the summed distance, (M, D)."""
    median = x_MBD.mean(dim=1)
    for _ in range(iterations):
        weights = 1.0 / (x_MBD - median[:, None]).norm(dim=-1).clamp(min=eps)
        median = (weights[..., None] * x_MBD).sum(1) / weights.sum(1, keepdim=True)
    return median
