"""megatron-core on machines without CUDA.

megatron-core's tensor-parallel layers run on CPU/gloo as they are, but a few helpers call CUDA
unconditionally. `apply()` patches exactly those, and only when CUDA is absent, so the same code
path (sequence parallel, the RNG tracker, activation checkpointing) is tested on CPU. Every patch
keeps megatron's semantics: the tracker forks the CPU generator the way it forks the CUDA one.
Only `bigtrain.entry.process.setup_process` calls `apply()`, once, before any model is built.
"""

from __future__ import annotations

import logging

import torch
from megatron.core.tensor_parallel import random as mrandom

_applied = False


def apply() -> None:
    global _applied
    if _applied or torch.cuda.is_available():
        return

    # Sequence-parallel gathers and layer buffers allocate on `torch.cuda.current_device()`;
    # on CPU that call raises, so name the CPU instead.
    torch.cuda.current_device = lambda: "cpu"

    # The RNG tracker reads and writes the CUDA generator; fork the CPU generator instead.
    mrandom._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)

    # The tracker's `add` seeds through torch.cuda.manual_seed; seed a CPU state instead and
    # leave the default generator as it was.
    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    mrandom.CudaRNGStatesTracker.add = add

    # `fork` warns when the CPU generator changes inside it; on CPU that generator *is* the
    # forked stream, so the change is expected. Drop that one message.
    logging.getLogger(mrandom.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage()
    )
    _applied = True
