# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Length-grouped batch sampling with ``DistributedSampler`` semantics.

Each epoch: a seeded permutation (``seed + epoch``, the same on every rank) is padded by repeating its
start (``drop_last=False``) or cut (``drop_last=True``) to a multiple of the global batch
``batch_size * num_replicas``; it is split into mega-batches of ``mega_batch_mult`` global batches,
each sorted by length (longest first) and cut into global batches; rank r takes the r-th slice of
``batch_size`` of every global batch, so all ranks step through samples of similar length together,
and every rank yields the same number of batches. The order of the global batches is shuffled, with
the one holding the longest sample moved first (an out-of-memory shows up at step 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["LengthGroupedBatchSampler"]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batch sampler that groups samples of similar length, partitioned across ranks.

    Use as ``DataLoader(dataset, batch_sampler=sampler, collate_fn=...)`` and call ``set_epoch`` each
    epoch.

    Args:
        lengths: token length of every sample (e.g. ``dataset.lengths``).
        batch_size: samples per batch on each rank.
        num_replicas: number of ranks (default: the process group's world size, else 1).
        rank: this rank (default: the process group's rank, else 0).
        shuffle: shuffle samples and batch order (False: sorted groups in index order, for evaluation).
        seed: shared seed; must be the same on all ranks.
        drop_last: drop the tail that does not fill a global batch instead of repeating samples.
        mega_batch_mult: global batches per sorted group (larger = less padding, less randomness).
        longest_first: put the global batch holding the longest sample first.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        mega_batch_mult: int = 50,
        longest_first: bool = True,
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid batch_size={batch_size}, num_replicas={num_replicas}, rank={rank}")
        if len(lengths) == 0:
            raise ValueError("lengths is empty")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.mega_batch_mult = max(1, int(mega_batch_mult))
        self.longest_first = longest_first
        self.epoch = 0
        global_bs = self.batch_size * self.num_replicas
        n = len(self.lengths)
        if drop_last:
            self.num_global_batches = n // global_bs
            if self.num_global_batches == 0:
                raise ValueError(f"{n} samples do not fill one global batch of {global_bs} with drop_last=True")
        else:
            self.num_global_batches = (n + global_bs - 1) // global_bs

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (changes the permutation; call on every rank before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_global_batches

    def global_batches(self) -> list[list[int]]:
        """The epoch's global batches (``batch_size * num_replicas`` indices each), same on every rank."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        global_bs = self.batch_size * self.num_replicas
        total = self.num_global_batches * global_bs
        if total > n:
            reps = (total + n - 1) // n
            perm = perm.repeat(reps)[:total]
        else:
            perm = perm[:total]
        mega = self.mega_batch_mult * global_bs
        batches: list[list[int]] = []
        for start in range(0, total, mega):
            chunk = perm[start : start + mega]
            order = torch.argsort(self.lengths[chunk], descending=True, stable=True)
            chunk = chunk[order].tolist()
            batches.extend(chunk[i : i + global_bs] for i in range(0, len(chunk), global_bs))
        if self.shuffle:
            order = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in order]
        if self.longest_first and batches:
            top = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i]].max()))
            batches.insert(0, batches.pop(top))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        b, r = self.batch_size, self.rank
        for gb in self.global_batches():
            yield gb[r * b : (r + 1) * b]
