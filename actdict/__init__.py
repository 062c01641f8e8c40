"""actdict: sparse dictionaries of language-model activations (harvest -> train -> analyze)."""

import os

# Large tensors on transparent huge pages (torch's CPU allocator, read once at its first allocation, so this
# must run before torch is imported). Without it every tensor over glibc's 32 MB mmap threshold (a [4096,
# 4096] float32 batch of codes is 64 MB) is fresh memory each step and is page-faulted in 4 KiB at a time:
# ~20 ms of a 100 ms [4096, 512] x [512, 4096] matmul on the 2-core CI machines, ~10% of an sae_l1 step
# (docs/training.md). Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
