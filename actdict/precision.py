"""Whether a device computes in bfloat16 natively, and the forward dtype ``auto`` stands for.

bfloat16 matmuls are fast only where the hardware has them: a CUDA GPU of compute capability 8.0 or later
(Ampere on), an x86 CPU with AVX512-BF16 or AMX. Elsewhere torch emulates them, and a bfloat16 forward is
several times *slower* than float32: on an AMD EPYC with AVX2 alone (2026-12-07, torch 2.13.0, two
threads), MiniLM's bare forward ran at 733 tokens/s in bfloat16 and 4,336 in float32 (its harvest 739 and
4,326; ``benchmarks/harvest.py --models minilm --tokens 16384 --repeats 1``), and a [2048, 384] x
[384, 1536] matmul took 57 times as long.
The torch flags read here are private (``torch.cpu._is_avx512_bf16_supported``); where they are missing the
CPU counts as without (``auto`` then picks float32, the exact choice). ARM CPUs count as without too.
"""

from __future__ import annotations

FORWARD_DTYPES = ("auto", "float32", "bfloat16")


def cpu_bf16() -> bool:
    """Whether this x86 CPU has bfloat16 instructions (AVX512-BF16 or AMX tiles), as torch reads them."""
    import torch

    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(callable(c) and bool(c()) for c in checks)


def cpu_emulates(device: str) -> bool:
    """Whether ``device`` is a CPU without bf16 instructions (``cpu_bf16``): torch emulates bf16 there."""
    return device.split(":")[0] == "cpu" and not cpu_bf16()


def bf16_native(device: str) -> bool:
    """Whether ``device`` (a resolved torch device string: 'cpu', 'cuda', 'cuda:1', 'mps') computes in
    bfloat16 natively: a CPU with ``cpu_bf16``, a CUDA GPU of compute capability >= 8.0, that GPU's
    ('cuda:1': GPU 1; torch's ``is_bf16_supported`` asks the current GPU's, whichever ``device`` names), a
    ROCm GPU (as torch's). Other devices: False."""
    import torch

    kind = device.split(":")[0]
    if kind == "cpu":
        return cpu_bf16()
    if kind == "cuda" and torch.cuda.is_available():
        return bool(torch.version.hip) or torch.cuda.get_device_capability(torch.device(device))[0] >= 8
    return False


def forward_dtype(asked: str, device: str) -> str:
    """The dtype a forward asked ``asked`` (``FORWARD_DTYPES``) runs in on ``device``: ``auto`` is bfloat16
    where the device has it natively (``bf16_native``), float32 elsewhere; the others as they are."""
    if asked not in FORWARD_DTYPES:
        raise ValueError(f"forward dtype must be one of {', '.join(FORWARD_DTYPES)}, got {asked!r}")
    if asked != "auto":
        return asked
    return "bfloat16" if bf16_native(device) else "float32"


def dtype_said(asked: str, dtype: str, device: str) -> str:
    """How a start line says the forward's dtype: as asked, or for ``auto`` which it became and why
    ('float32 (auto: this CPU lacks native bf16)')."""
    if asked != "auto":
        return dtype
    kind = device.split(":")[0]
    where = "this CPU" if kind == "cpu" else "this GPU" if kind == "cuda" else f"device {device}"
    return f"{dtype} (auto: {where} {'has' if dtype == 'bfloat16' else 'lacks'} native bf16)"


def harvest_forward(asked: str, device: str) -> tuple[str, str, str | None]:
    """For a harvest's ``harvest.dtype`` ``asked`` on ``device``: (the dtype its forward runs in, how its
    start lines say it, the warning to print first when bfloat16 was asked where it is emulated, or None)."""
    dtype = forward_dtype(asked, device)
    warn = (slow_bf16_note(device, "harvest.dtype bfloat16", "harvest.dtype=float32 or auto")
            if asked == "bfloat16" else None)
    return dtype, dtype_said(asked, dtype, device), warn


def slow_bf16_note(device: str, what: str, fix: str) -> str | None:
    """A warning for bfloat16 compute (``what``: 'harvest.dtype bfloat16') on ``device`` when it is a CPU
    without bf16 instructions (emulated there: several times slower than float32) or a CUDA GPU of compute
    capability below 8.0 (no bf16 tensor cores), saying ``fix``; else None."""
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available() and not bf16_native(device):
        return (f"{what} on a GPU of compute capability below 8.0 (before Ampere: no bf16 tensor cores), "
                f"where it gains nothing over float32 and may be slower; {fix} is faster here")
    if not cpu_emulates(device):
        return None
    return (f"{what} on a CPU without bf16 instructions (AVX512-BF16 or AMX): torch emulates it, several "
            f"times slower than float32 (a [2048, 384] x [384, 1536] matmul 57x on an AVX2 CPU); {fix} is "
            "faster here")


def emulated_note(device: str, dtype: str) -> str:
    """What a benchmark's header says beside its dtype: ' (emulated: this CPU lacks bf16 instructions ...)'
    for ``dtype`` bfloat16 (a forward, autocast) on a CPU without them (``cpu_bf16``), else ''."""
    if dtype != "bfloat16" or not cpu_emulates(device):
        return ""
    return (" (emulated: this CPU lacks bf16 instructions, AVX512-BF16 or AMX; several times slower than "
            "float32)")
