"""Several processes under ``torchrun``: one device per process, DDP on PyTorch's own process group.

tierlab has no launcher of its own.  ``torchrun`` starts the processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` reads them, picks the process's device
(``cuda:LOCAL_RANK``, or the CPU), and initialises the process group: NCCL on CUDA, gloo
on a CPU, with a timeout on every collective so that a rank that hangs ends the job with
an error instead of freezing it.  A process that was not started by torchrun (or a
torchrun job of one process) gets :data:`SINGLE`, on which every method is a cheap no-op.

What the training loop exchanges between ranks, and when:

* gradients: DDP's all-reduce inside ``backward()`` (skipped with ``no_sync()`` on all but
  the last micro-batch of an accumulated step);
* at log steps only: the buffered per-step rows (the loss is averaged, the skip flags and
  loss scales are checked to be identical) and whether any rank was asked to stop;
* at evaluations: the sums of loss and correct predictions (each rank scores its share of
  the validation blocks);
* at checkpoints: each rank's random streams and unread rows, which rank 0 writes.
"""

from __future__ import annotations

import datetime
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, UserError
from ..launch import torchrun_env
from ..models import extract_logits
from .device import resolve_device

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; :data:`SINGLE` for a plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # tierlab initialised the process group, so it also destroys it
    sharded: bool = False  # --fsdp: parameters, gradients and optimizer state sharded with FSDP2

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (small Python objects: a run name, a decision)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (checkpoint parts; small and rare)."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[world_size, *tensor.shape]: every rank's ``tensor`` (no host sync)."""
        if not self.active:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (no host sync)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (a host sync: log steps only)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def main_first(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 first (e.g. filling a cache), then on the others.

        When it fails on rank 0 (a missing file, say), the other ranks stop with one plain
        line pointing at rank 0's message, not with a traceback from a broken collective.
        """
        if not self.active:
            return work()
        if self.is_main:
            try:
                result = work()
            except BaseException as exc:
                said = exc.problem if isinstance(exc, UserError) else str(exc).strip().split("\n")[0]
                self.broadcast(f"{type(exc).__name__}: {said}")
                raise
            self.broadcast(None)
            return result
        problem = self.broadcast(None)
        if problem is not None:
            raise UserError(f"Rank 0 stopped before training ({problem})", "see rank 0's message above.")
        return work()

    # ------------------------------------------------------------------ the model
    def wrap(self, model: nn.Module, device: torch.device, probe: torch.Tensor,
             compile_block: Callable[[nn.Module], None] | None = None) -> nn.Module:
        """``model`` in DistributedDataParallel, or sharded with FSDP2 (the model itself for one process).

        DDP copies rank 0's weights and buffers to every rank here, so all replicas start
        equal however each rank initialised them.  Buffers are not re-broadcast before each
        forward (``broadcast_buffers=False``): a transformer's buffers (masks, rotary
        tables) are constants, and the broadcast would be one more collective per micro-batch.
        """
        if not self.active:
            return model
        if self.sharded:
            return shard(model, device, self.world_size, compile_block)
        unused = parameters_without_gradient(model, probe.to(device))
        if unused:
            shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
            log.warning("parameters that get no gradient: %s. DDP now looks for unused parameters at every step "
                        "(slower); remove them or set requires_grad=False on them.", shown)
        # torch >= 2.12 names the option forward_sync_buffers and deprecates broadcast_buffers.
        accepted = inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=bool(unused), **no_buffer_sync)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Dist()


def parameters_without_gradient(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of trainable parameters that one forward and backward pass leaves without a gradient.

    DDP must be told about them (``find_unused_parameters``), or it fails at the second step
    with an error that does not name them.  The pass runs under ``fork_rng`` and its
    gradients are thrown away, so it changes nothing the run does.
    """
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=inputs.device.type):
        extract_logits(model(inputs[:1])).float().mean().backward()
    names = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return names


def setup(device_spec: str, timeout_s: float, fsdp: bool = False) -> tuple[Dist, torch.device]:
    """This process's :class:`Dist` and device; joins (or initialises) the process group under torchrun."""
    found = torchrun_env()
    if found is None or found[1] <= 1:
        if fsdp:
            log.warning("--fsdp shards over the processes of a torchrun job; in one process it changes nothing")
        return SINGLE, resolve_device(device_spec)
    rank, world, local = found
    if device_spec.startswith("cuda:"):
        raise ConfigError(f"--device {device_spec} names one GPU, but torchrun started {world} processes.",
                          "use --device cuda (or auto): each process takes the GPU of its LOCAL_RANK.")
    use_cuda = device_spec == "cuda" or (device_spec == "auto" and torch.cuda.is_available())
    if use_cuda:
        resolve_device("cuda")  # a clear error when this build sees no GPU
        if local >= torch.cuda.device_count():
            raise ConfigError(f"This process has LOCAL_RANK {local}, but the machine has only "
                              f"{torch.cuda.device_count()} GPU(s).",
                              f"pass --nproc_per_node {torch.cuda.device_count()} (or fewer) to torchrun.")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if use_cuda else None)
    elif dist.get_world_size() != world:
        raise ConfigError(f"The process group has {dist.get_world_size()} ranks but WORLD_SIZE is {world}.",
                          "initialise it from torchrun's environment, or let tierlab do it.")
    log.info("rank %d of %d on %s (%s%s)", rank, world, device, dist.get_backend(), ", FSDP2" if fsdp else ", DDP")
    return Dist(rank, world, local, owns, fsdp), device


# ----------------------------------------------------------------------------- FSDP2 (--fsdp)
def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the elements of the largest ``nn.ModuleList`` of same-class modules."""
    best: list[nn.Module] = []
    best_size = 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = list(module), size
    return best


def shard(model: nn.Module, device: torch.device, world_size: int,
          compile_block: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """FSDP2: each transformer block its own unit (gathered just before it runs), then the rest.

    Parameters, gradients and AdamW state live sharded over the ranks, so each GPU holds
    about 1/world_size of them; a block's full weights exist only while it computes.
    Embeddings and an output head tied to them stay together in the root unit.
    ``compile_block`` (``--fsdp --compile``): applied to each block before it is sharded --
    torch.compile per block, as torchtitan does: FSDP2's gather and scatter stay between the
    compiled blocks, where they overlap with compute, instead of inside one graph.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    blocks = repeated_blocks(model)
    for block in blocks:
        if compile_block is not None:
            compile_block(block)
        fully_shard(block, mesh=mesh)
    if compile_block is not None and not blocks:
        log.warning("--compile with --fsdp compiles the model's repeated blocks, and this model has none that "
                    "tierlab can find (an nn.ModuleList of like modules): it trains uncompiled")
    fully_shard(model, mesh=mesh)
    log.info("FSDP2: %d block(s) and the root sharded over %d ranks", len(blocks), world_size)
    return model


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a (DTensor) gradient or parameter; a plain tensor as it is."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded weights on rank 0's CPU (an empty dict on the other ranks); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on rank 0 (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Any],
                    optimizer_state: dict[str, Any]) -> None:
    """Shard full (checkpointed) weights and optimizer state back onto this rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=optimizer_state, options=options)
