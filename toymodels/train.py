"""Training SAE stacks with Adam (atomic checkpoints, exact resume) and their feature-basis view.

`train` optimises every member of a stack at once: member losses are summed, so each member gets
the gradient it would get alone, and Adam is elementwise, so each gets exactly its solo update.
`to_feature_basis` turns a trained toy SAE into theory's SAEParams so its exact expected loss can
be compared with theory's optimum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from theory.config import (
    require_choice,
    require_nonnegative_int,
    require_number,
    require_positive_int,
)
from theory.sae import SAEParams
from toymodels import distributed
from toymodels.resources import resolve_device
from toymodels.runs import atomic_write
from toymodels.sae import SAE

DataSource = Callable[[int], Tensor]


@dataclass
class TrainLog:
    """Per-member losses averaged over each logging interval (rows) for the steps listed."""

    steps: list[int] = field(default_factory=list)
    total: list[np.ndarray] = field(default_factory=list)  # each (M,)
    mse: list[np.ndarray] = field(default_factory=list)
    sparsity: list[np.ndarray] = field(default_factory=list)
    aux: list[np.ndarray] = field(default_factory=list)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """{"steps": (L,), "total"/"mse"/"sparsity"/"aux": (L, M)}."""
        out = {"steps": np.array(self.steps)}
        for name in ("total", "mse", "sparsity", "aux"):
            out[name] = np.array(getattr(self, name))
        return out


def sparsity_factor(step: int, warmup_steps: int) -> float:
    """step / warmup_steps during the warm-up, then 1 (SAELens's L1 schedule: the first step
    trains without sparsity)."""
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def learning_rate_factor(
    step: int, n_steps: int, warmup_steps: int, decay_fraction: float
) -> float:
    """Linear warm-up over warmup_steps, then constant, then linear decay to 0 over the last
    decay_fraction of the steps."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    decay_start = int(n_steps * (1 - decay_fraction))
    if step >= decay_start and decay_fraction > 0:
        factor *= (n_steps - step) / (n_steps - decay_start)
    return factor


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """How an SAE stack is trained: Adam, a warm-up/constant/decay schedule, checkpoints."""

    samples: int = 1_000_000
    """Training samples per SAE (tokens, on a language model)."""
    batch_size: int = 4096
    """Samples per step."""
    lr: float = 3e-4
    """Adam's learning rate."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up."""
    decay_fraction: float = 0.2
    """Final fraction of the steps over which the learning rate decays linearly to 0."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2); the hedging paper's SAELens runs use (0, 0.999)."""
    l1_warmup_steps: int = 0
    """Steps over which the sparsity coefficient rises linearly from 0 (SAELens's
    l1_warm_up_steps); 0: full from the first step."""
    seed: int = 0
    """Seeds the global torch RNG (data sources that draw from it become reproducible)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    precision: str = "fp32"
    """fp32, or bf16: the forward and loss under bfloat16 autocast (matmuls in bf16) on the run's
    device, cpu or cuda; parameters, gradients and Adam's state stay fp32 (master weights)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (with a checkpoint path)."""
    log_every: int = 100
    """Steps averaged per row of the training log."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("samples", "batch_size", "checkpoint_every", "log_every"):
            require_positive_int(name, getattr(self, name))
        if self.samples < self.batch_size:
            raise ValueError(
                f"samples ({self.samples}) must be at least one batch_size ({self.batch_size})"
            )
        require_number("lr", self.lr, 0, open_low=True)
        require_nonnegative_int("warmup_steps", self.warmup_steps)
        require_number("decay_fraction", self.decay_fraction, 0, 1)
        if isinstance(self.adam_betas, str) or len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        for beta in self.adam_betas:
            require_number("each of adam_betas", beta, 0, 1)
            if beta == 1:
                raise ValueError(f"adam_betas must be in [0, 1), got {self.adam_betas!r}")
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        require_nonnegative_int("l1_warmup_steps", self.l1_warmup_steps)
        require_choice("precision", self.precision, PRECISIONS)
        resolve_device(self.device)  # a device this machine lacks is refused here

    @property
    def n_steps(self) -> int:
        return self.samples // self.batch_size

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def train(
    sae: SAE,
    data: DataSource,
    config: TrainConfig = TrainConfig(),
    checkpoint_path: str | Path | None = None,
) -> TrainLog:
    """Train `sae` in place (moved to config.device) on config.samples samples per member.

    `data(batch_size)` returns a batch (B, D) shared by all members or (M, B, D), one per member.
    The global torch RNG is seeded with config.seed, so a data source drawing from it is
    reproducible; one with its own state may expose state_dict()/load_state_dict() to be
    checkpointed too. With checkpoint_path, the state (SAE, Adam, RNG, data, step) is written
    atomically every config.checkpoint_every steps and at the end; an existing checkpoint is
    resumed, and the resumed run ends with exactly the parameters of an uninterrupted one. A
    checkpoint that cannot be read raises a ValueError; `discard_checkpoint(checkpoint_path)`
    first trains from step 0 instead.

    Under torchrun (toymodels.distributed) the processes train one SAE data-parallel:
    config.batch_size stays the global batch, each rank keeps rows rank::world_size of it, the
    gradients and logged losses are global-batch means, the dead-latent counters are those of
    the global batch, and rank 0 alone writes the checkpoint, which resumes at any world size.
    """
    device = distributed.process_device(config.device)
    with distributed.session(device):
        try:
            return _train(sae, data, config, device, checkpoint_path)
        finally:
            sae.split_batches(None)  # the process group it reduces over closes here


def _train(
    sae: SAE,
    data: DataSource,
    config: TrainConfig,
    device: torch.device,
    checkpoint_path: str | Path | None,
) -> TrainLog:
    n_samples, batch_size, lr = config.samples, config.batch_size, config.lr
    seed = config.seed
    n_steps = config.n_steps
    run = {
        "n_samples": n_samples,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": config.warmup_steps,
        "decay_fraction": config.decay_fraction,
        "seed": seed,
        "sae": sae.full_config(),
        "adam_betas": config.adam_betas,
        "l1_warmup_steps": config.l1_warmup_steps,
        "precision": config.precision,
    }
    sae.to(device).train()
    parallel = distributed.is_distributed()
    main = distributed.world().is_main
    if parallel:
        distributed.broadcast_state(sae)
        distributed.barrier()  # rank 0 may have just discarded the checkpoint
        sae.split_batches(batch_size)
    dtype = sae.W_dec.dtype  # batches are cast to the SAE's precision
    # bf16 autocast runs the matmuls of the forward in bfloat16; autograd takes each gradient
    # back to its parameter's dtype, so Adam updates fp32 master weights.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=config.adam_betas, fused=True)
    log, step = TrainLog(), 0
    sums = None  # per-member loss sums since the last log, kept on the device (no syncs)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None and path.exists():
        step, sums = _resume(path, run, sae, optimizer, data, log)
        sums = None if sums is None else sums.to(device)
    else:
        torch.manual_seed(seed)

    def save() -> None:
        if path is not None and main:
            state = _checkpoint(run, step, sums, sae, optimizer, data, log)
            atomic_write(path, lambda f: torch.save(state, f))

    bar = tqdm(
        total=n_steps,
        initial=step,
        disable=not (config.progress and main),
        unit="step",
        desc=sae.architecture,
    )
    while step < n_steps:
        factor = learning_rate_factor(step, n_steps, config.warmup_steps, config.decay_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        if config.l1_warmup_steps:
            sae.sparsity_scale = sparsity_factor(step, config.l1_warmup_steps)
        # Every rank draws the global batch (same RNG and data state) and keeps its rows.
        batch = distributed.shard(data(batch_size), batch_size)
        with autocast:
            losses = sae.loss(batch.to(device, dtype, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        parts = torch.stack([losses[k].detach() for k in ("per_member", "mse", "sparsity", "aux")])
        if parallel:
            rows = batch.shape[-2]
            distributed.all_reduce_gradients(sae, rows, batch_size)
            distributed.weighted_sum(parts, rows, batch_size)
        optimizer.step()
        step += 1
        sums = parts if sums is None else sums + parts
        if step % config.log_every == 0 or step == n_steps:
            interval = (step - 1) % config.log_every + 1
            means = (sums / interval).cpu().numpy()
            log.steps.append(step)
            for row, name in zip(means, ("total", "mse", "sparsity", "aux"), strict=True):
                getattr(log, name).append(row)
            sums = None
            bar.set_postfix(loss=f"{means[0].mean():.4g}")
        if step % config.checkpoint_every == 0 or step == n_steps:
            save()
        bar.update(1)
    bar.close()
    sae.sparsity_scale = 1.0  # the trained SAE's loss is its full loss
    return log


def _checkpoint(
    run: dict,
    step: int,
    sums: Tensor | None,
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    data: DataSource,
    log: TrainLog,
) -> dict:
    state = {
        "run": run,
        "step": step,
        "sums": sums,
        "sae": sae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "log": log,
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if hasattr(data, "state_dict"):
        state["data"] = data.state_dict()
    return state


def _resume(
    path: Path,
    run: dict,
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    data: DataSource,
    log: TrainLog,
) -> tuple[int, Tensor | None]:
    state = _load_checkpoint(path)
    # A checkpoint written before an option existed was trained with its default.
    saved = _with_defaults(state["run"], run, TrainConfig)
    saved["sae"] = _with_defaults(saved["sae"], run["sae"], type(sae.config))
    if saved != run:
        changed = sorted(k for k in run if saved.get(k) != run[k])
        raise ValueError(
            f"checkpoint {path} belongs to a different run (differs in {changed}); "
            "delete it or use another checkpoint_path"
        )
    sae.load_state_dict(state["sae"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if "data" in state:
        data.load_state_dict(state["data"])
    for name, values in vars(state["log"]).items():
        getattr(log, name).extend(values)
    return state["step"], state["sums"]


def _with_defaults(saved: dict, current: dict, config_class: type) -> dict:
    """saved, plus the keys of current it lacks that are fields of config_class with a default,
    at that default."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(config_class)
        if f.default is not dataclasses.MISSING
    }
    added = {key: defaults[key] for key in current.keys() - saved.keys() if key in defaults}
    return {**added, **saved}


CHECKPOINT_KEYS = ("run", "step", "sums", "sae", "optimizer", "torch_rng", "log")


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint's state; one line naming the file and the way out when it is unreadable
    (truncated by a full disk, overwritten by something else, from an incompatible version)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        problem = None if isinstance(state, dict) else f"holds a {type(state).__name__}"
    except Exception as error:  # torch.load raises whatever its unpickler or zip reader meets
        first_line = next(iter(str(error).splitlines()), "")[:200]
        state, problem = None, f"{error.__class__.__name__}: {first_line}"
    if problem is None and (missing := [k for k in CHECKPOINT_KEYS if k not in state]):
        problem = f"lacks {', '.join(missing)}"
    if problem is not None:
        raise ValueError(
            f"checkpoint {path} is corrupt or truncated ({problem}); delete it "
            "(toymodels.train.discard_checkpoint, or the CLI's --restart) to train from step 0"
        )
    return state


def discard_checkpoint(path: str | Path) -> bool:
    """Delete a training checkpoint so the next `train` with it starts from step 0; True when
    there was one."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True


def to_feature_basis(sae: SAE, directions_ND: Tensor | np.ndarray) -> list[SAEParams]:
    """Each member's parameters in the feature basis (theory's SAEParams, float64 numpy).

    directions_ND: orthonormal feature directions (n, D). Only the member's active latents are
    kept (k = its width). encoder = W_enc^T F^T, decoder = W_dec F^T, decoder_bias = F b_dec, and
    encoder_bias absorbs the part of b_dec orthogonal to the feature span, so pre-activations
    on inputs in the span are identical. Components of W_dec and b_dec outside the span are
    dropped: they only add loss, so theory's loss of these params is a lower bound on the SAE's.
    Architectures with an inference threshold (JumpReLU, BatchTopK) carry it as `threshold`.
    TopK SAEs ranking by raw activation are refused: theory ranks by contribution.
    """
    if not (sae.capabilities.relu_codes or sae.capabilities.theory_codes):
        raise ValueError(
            f"theory's SAEParams describe ReLU, TopK (ranked by contribution), BatchTopK and "
            f"JumpReLU codes; not this {sae.architecture!r} SAE (allowed: relu-l1, topk, "
            "batchtopk, jumprelu, matryoshka with inner relu-l1)"
        )
    F_ND = torch.as_tensor(np.asarray(directions_ND), dtype=torch.float64)
    if F_ND.dim() != 2 or F_ND.shape[1] != sae.d_in:
        raise ValueError(f"directions must be (n_features, {sae.d_in}), got {tuple(F_ND.shape)}")
    if not torch.allclose(F_ND @ F_ND.T, torch.eye(len(F_ND), dtype=torch.float64), atol=1e-5):
        raise ValueError("feature directions must be orthonormal rows")
    params = []
    with torch.no_grad():
        for m in range(sae.n_members):
            active = sae.latent_mask[m].cpu()
            W_enc_DK = sae.W_enc[m].detach().cpu().double()[:, active]
            W_dec_KD = sae.W_dec[m].detach().cpu().double()[active]
            b_enc = sae.b_enc[m].detach().cpu().double()[active]
            b_dec = sae.b_dec[m].detach().cpu().double()
            b_dec_in_span = F_ND @ b_dec
            b_dec_orthogonal = b_dec - F_ND.T @ b_dec_in_span
            threshold = None
            if sae.capabilities.inference_threshold:
                threshold = sae.inference_threshold()[m].detach().cpu().double()[active].numpy()
            params.append(
                SAEParams(
                    encoder=(W_enc_DK.T @ F_ND.T).numpy(),
                    encoder_bias=(b_enc - W_enc_DK.T @ b_dec_orthogonal).numpy(),
                    decoder=(W_dec_KD @ F_ND.T).numpy(),
                    decoder_bias=b_dec_in_span.numpy(),
                    threshold=threshold,
                )
            )
    return params
