"""The dtype policy for the machine at hand, and a warning when a forced one is slow here.

CPUs differ between machines: some have native bfloat16 (AVX512-BF16 or AMX),
some native float16 (AVX512-FP16 or AMX-FP16), many only AVX2/FMA. Without
native support TensorFlow emulates the 16-bit types op by op. Measured with
the SimCLR training step of the small CNN (28 px, batch 256, LARS) on a
2-core AMD EPYC with AVX2 only, back to back in one run (docs/BENCHMARKS.md):

    float32          595 images/s
    mixed_float16    140 images/s   (4.3x slower)
    mixed_bfloat16    45 images/s   (13x slower)

Native bfloat16 is not enough to be faster. With AMX (Intel Xeon 4th gen
and later) mixed_bfloat16 was 1.3x (small CNN) and 1.8x (ResNet-18) faster
than float32; on a Xeon with AVX512-BF16 but no AMX it was slower, back to
back in one run (docs/BENCHMARKS.md, "Xeon-BF16"):

                  float32   mixed_bfloat16
    small CNN     1171      834 images/s   (0.71x)
    ResNet-18     52.1      35.2 images/s  (0.68x)

and the CPU's matrix-multiply rate was 158 GFLOP/s in float32 against 106 in
bfloat16 there (AVX512-BF16 has a bfloat16 dot product, but oneDNN's
convolutions gain little from it; AMX's tile unit is several times float32's
rate). float16 is worse still on a CPU: on a Xeon with AMX-BF16 and
AVX512-FP16 (no AMX-FP16), back to back in one run, float32 1,550 images/s,
mixed_bfloat16 2,117 (1.37x), mixed_float16 6.2 (about 250x slower), so a
CPU is never given float16 by `auto`.

So nothing in keras_ssl names a precision: `auto` decides per machine, and
`slow_policy_warning` explains a forced choice that will be slow.
"""

import functools

POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bfloat16 arithmetic
CPU_FP16_FLAGS = ("avx512_fp16", "amx_fp16")  # native float16 arithmetic
# native and faster than float32 for training (see the module docstring)
CPU_FAST_BF16_FLAGS = ("amx_bf16",)
# none for float16: TensorFlow 2.21's float16 training step on a CPU with AVX512-FP16 ran
# about 250x slower than float32 (Xeon-AMX: 6.2 against 1,550 images/s, small CNN); AMX-FP16
# (Granite Rapids) was never measured, so it is not trusted either.
CPU_FAST_FP16_FLAGS = ()
# flags worth printing next to a speed figure
CPU_SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                   "amx_fp16")
_SLOWDOWN = {"mixed_bfloat16": "about 13x", "mixed_float16": "about 4x"}  # emulated, AVX2-only EPYC
# why a CPU with the native 16-bit instructions is still slow (module docstring)
_NATIVE_BUT_SLOW = {
    "mixed_bfloat16": " but it has no AMX, so bfloat16 training is about 0.7x the speed of float32 on such a CPU",
    "mixed_float16": (", but TensorFlow's float16 training step ran about 250x slower than float32 on such a "
                      "CPU"),
}


@functools.lru_cache(maxsize=None)
def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    return _cpuinfo()[1]


def cpu_summary(flags=None):
    """One line naming the CPU and its speed-relevant flags, e.g.
    `AMD EPYC, 2 cores; avx2 fma; no avx512_bf16/amx_bf16`, printed next to every speed figure."""
    import os

    model = _cpuinfo()[0] or "unknown CPU"
    flags = cpu_flags() if flags is None else flags
    present = [f for f in CPU_SPEED_FLAGS if f in flags]
    missing = [f for f in CPU_BF16_FLAGS if f not in flags]
    return (f"{model}, {os.cpu_count()} cores; {' '.join(present) or 'no avx2'}"
            + (f"; no {'/'.join(missing)}" if missing else ""))


def gpu_compute_capability():
    """(major, minor) of the first GPU TensorFlow sees, or None without one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0)))


def native_16bit(policy, flags=None, gpu_capability=None):
    """True when the device that will train runs `policy`'s 16-bit type natively
    (bfloat16: GPUs of compute capability 8.0+, CPUs with AVX512-BF16/AMX-BF16;
    float16: GPUs of 7.0+, CPUs with AVX512-FP16/AMX-FP16). float32 is always native."""
    if policy not in ("mixed_bfloat16", "mixed_float16"):
        return True
    if gpu_capability is not None:
        return gpu_capability >= ((8, 0) if policy == "mixed_bfloat16" else (7, 0))
    flags = cpu_flags() if flags is None else flags
    wanted = CPU_BF16_FLAGS if policy == "mixed_bfloat16" else CPU_FP16_FLAGS
    return any(f in flags for f in wanted)


def faster_than_float32(policy, flags=None, gpu_capability=None):
    """True when `policy` is expected to train faster than float32 on the device
    that will train: a GPU where its 16-bit type is native (see `native_16bit`),
    a CPU with AMX-BF16 for bfloat16. A CPU with only AVX512-BF16 runs bfloat16
    natively but more slowly than float32 (0.7x), and float16 was far slower than
    float32 on every CPU measured (module docstring)."""
    if policy not in ("mixed_bfloat16", "mixed_float16"):
        return True
    if gpu_capability is not None:
        return native_16bit(policy, flags, gpu_capability)
    flags = cpu_flags() if flags is None else flags
    wanted = CPU_FAST_BF16_FLAGS if policy == "mixed_bfloat16" else CPU_FAST_FP16_FLAGS
    return any(f in flags for f in wanted)


def resolve_dtype_policy(name, flags=None, gpu_capability="detect"):
    """`auto` -> the fastest policy for this machine; any other name unchanged.

    auto: `mixed_bfloat16` on GPUs of compute capability 8.0+ (A100, H100) and
    on CPUs with AMX-BF16 (1.3-1.8x faster there, docs/BENCHMARKS.md);
    `mixed_float16` on GPUs of capability 7.x (V100, T4: fast float16, no
    bfloat16); `float32` elsewhere: CPUs without AMX, where bfloat16 is
    emulated (AVX2 only: 13x slower) or native but slower than float32
    (AVX512-BF16 without AMX: 0.7x).
    """
    if name not in POLICIES:
        raise ValueError(f"dtype policy must be one of {POLICIES}, got {name!r}")
    if name != "auto":
        return name
    capability = gpu_compute_capability() if gpu_capability == "detect" else gpu_capability
    if capability is not None:
        if capability >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16" if capability >= (7, 0) else "float32"
    return "mixed_bfloat16" if faster_than_float32("mixed_bfloat16", flags) else "float32"


def dtype_policy_reason(name, flags=None, gpu_capability="detect"):
    """Why `name` resolves to the policy it does here, in a few words (printed at start)."""
    capability = gpu_compute_capability() if gpu_capability == "detect" else gpu_capability
    device = (f"GPU of compute capability {capability[0]}.{capability[1]}" if capability is not None
              else f"CPU: {cpu_summary(flags)}")
    chosen = resolve_dtype_policy(name, flags, capability)
    if name != "auto":
        native = native_16bit(chosen, flags, capability)
        return f"as asked ({device}{'' if native else '; emulated here, slow'})"
    if chosen == "float32":
        if capability is None and native_16bit("mixed_bfloat16", flags):
            return f"auto: bfloat16 is native here but slower than float32 without AMX ({device})"
        return f"auto: no native 16-bit type ({device})"
    return f"auto: native {'bfloat16' if chosen == 'mixed_bfloat16' else 'float16'} ({device})"


def slow_policy_warning(name, flags=None, gpu_capability="detect", inputs_per_step=None):
    """One line warning that `name` is slow on this machine, or None; with
    `inputs_per_step`, also how long a step is expected to take (`expected_step_note`)."""
    if name in ("auto", "float32"):
        return None
    capability = gpu_compute_capability() if gpu_capability == "detect" else gpu_capability
    if faster_than_float32(name, flags, capability):
        return None
    kind = "bfloat16" if name == "mixed_bfloat16" else "float16"
    device = (f"this GPU (compute capability {capability[0]}.{capability[1]})" if capability is not None
              else f"this CPU ({cpu_summary(flags)})")
    switch = f"use --dtype_policy=auto (picks {resolve_dtype_policy('auto', flags, capability)}) or float32"
    step = expected_step_note(name, inputs_per_step, flags) if inputs_per_step and capability is None else ""
    if native_16bit(name, flags, capability):  # only on a CPU: a GPU's native type is fast
        return f"warning: --dtype_policy={name}: {kind} is native on {device}{_NATIVE_BUT_SLOW[name]}{step}; {switch}"
    return (f"warning: --dtype_policy={name} has no native {kind} on {device}; it is emulated and "
            f"{_SLOWDOWN[name]} slower than float32 here{step}; {switch}")


# Training rates of the small CNN's SimCLR step (inputs/s) measured under each slow
# policy (module docstring), for the step time `slow_policy_warning` announces.
_MEASURED_RATE = {("mixed_float16", True): 6.2, ("mixed_float16", False): 140.0,
                  ("mixed_bfloat16", True): 834.0, ("mixed_bfloat16", False): 45.0}


def expected_step_note(name, inputs_per_step, flags=None):
    """`; expect a step of 1024 inputs to take about 2 min 45 s or more (...)`, from the
    rate measured for the small CNN under `name` on a CPU like this one (bigger
    encoders are slower still); "" for a fast policy."""
    if name in ("auto", "float32") or faster_than_float32(name, flags):
        return ""
    rate = _MEASURED_RATE[name, native_16bit(name, flags)]
    from keras_ssl.progress import format_duration

    return (f"; expect a step of {inputs_per_step} inputs to take about {format_duration(inputs_per_step / rate)} "
            f"or more (the small CNN trained at {rate:g} inputs/s under it on such a CPU)")


def refuse_cpu_float16(name, allowed, gpu_capability="detect"):
    """A `UserError` for mixed_float16 on a CPU unless `allowed`: it trained about 250x
    slower than float32 with native float16 instructions and 4x without (module
    docstring), so a run that would take minutes takes hours."""
    from keras_ssl.errors import UserError

    capability = gpu_compute_capability() if gpu_capability == "detect" else gpu_capability
    if name == "mixed_float16" and capability is None and not allowed:
        raise UserError("--dtype_policy=mixed_float16 on a CPU trains 4x (emulated) to 250x (AVX512-FP16) slower "
                        "than float32; use --dtype_policy=auto or float32, or add --allow_slow_precision to run "
                        "it anyway")


def onednn_enabled():
    """True when TensorFlow runs its oneDNN kernels (see keras_ssl/__init__.py)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
