"""One entry point for one process or many (torchrun): DDP with gloo on CPU and NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from emojidiff.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """'auto' -> this rank's GPU if there is one, else the CPU; 'cuda' -> cuda:<local_rank>; cuda:N alone only."""
    if world_size > 1 and name.startswith("cuda:"):  # refused, not remapped: the profile would not say what runs
        raise ConfigError(f"device {name!r} under torchrun ({world_size} processes) would put every rank on one GPU; "
                          "set device: cuda (or auto): each rank then takes cuda:<LOCAL_RANK>")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available (set device: cpu or auto)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the hardware does it natively ('auto'), else fp32 (None); fp16 only if asked."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":  # CUDA: trained with a GradScaler; sampled in fp32
        return torch.float16
    if device.type == "cuda":  # not counting emulation: V100/T4 would run bf16 slower than fp32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    fast = ("avx512_bf16" in flags or "amx_bf16" in flags) and "AVX512" in torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if fast else None


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """The profile's name of an autocast dtype (None: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank, world)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


def shard(n: int, info: DistInfo) -> slice:
    """This rank's contiguous share of a global batch of `n` (which must divide evenly)."""
    if n % info.world_size:
        raise ValueError(f"global batch {n} does not divide across {info.world_size} processes")
    per = n // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)


def wrap(net: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around `net` when there are several processes."""
    if not info.active:
        return net
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(net, device_ids=ids, broadcast_buffers=False)


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def mean(value: float, info: DistInfo) -> float:
    """The mean of a scalar over all processes (for logging)."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if info.device.type == "cuda":
        t = t.to(info.device)
    dist.all_reduce(t)
    return t.item() / info.world_size


def sum_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The elementwise sum of a tensor over all processes (one all-reduce; the tensor on this rank's device)."""
    if info.active:
        dist.all_reduce(t)
    return t


def broadcast(obj, info: DistInfo):
    """Rank 0's value of a small picklable object on every rank (sent over the process group, never a file)."""
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, info: DistInfo) -> list:
    """Every rank's value of a small object, in rank order, on every rank."""
    if not info.active:
        return [obj]
    parts = [None] * info.world_size
    dist.all_gather_object(parts, obj)
    return parts


def cleanup(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
