"""The dtype policy is chosen per machine, a forced slow one is warned about, and no flagfile names one."""

import glob
import os
import subprocess
import sys

import pytest

from conftest import REPO
from keras_ssl.precision import (cpu_flags, dtype_policy_reason, faster_than_float32, native_16bit,
                                  resolve_dtype_policy, slow_policy_warning)

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"}
COOPER_LAKE = AVX2_ONLY | {"avx512f", "avx512_bf16"}


@pytest.mark.parametrize("flags,gpu,expected", [
    (AVX2_ONLY, None, "float32"),
    (COOPER_LAKE, None, "float32"),  # native bfloat16 without AMX: slower than float32
    (SAPPHIRE_RAPIDS, None, "mixed_bfloat16"),
    (frozenset(), None, "float32"),
    (AVX2_ONLY, (8, 0), "mixed_bfloat16"),
    (AVX2_ONLY, (7, 5), "mixed_float16"),
    (AVX2_ONLY, (6, 1), "float32"),
])
def test_auto_picks_per_machine(flags, gpu, expected):
    assert resolve_dtype_policy("auto", flags, gpu) == expected
    assert resolve_dtype_policy("float32", flags, gpu) == "float32"  # an explicit choice is kept
    assert resolve_dtype_policy("mixed_float16", flags, gpu) == "mixed_float16"


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="dtype policy must be one of"):
        resolve_dtype_policy("bfloat16", AVX2_ONLY, None)


def test_warning_only_where_the_16_bit_type_is_slow():
    line = slow_policy_warning("mixed_bfloat16", AVX2_ONLY, None)
    assert line.startswith("warning: --dtype_policy=mixed_bfloat16 has no native bfloat16 on this CPU")
    assert "13x slower" in line and "--dtype_policy=auto (picks float32)" in line and "\n" not in line
    assert "no native float16" in slow_policy_warning("mixed_float16", COOPER_LAKE, None)  # bf16, no fp16
    # native bfloat16 without AMX: its own line, with the measured slow-down
    line = slow_policy_warning("mixed_bfloat16", COOPER_LAKE, None)
    assert line.startswith("warning: --dtype_policy=mixed_bfloat16: bfloat16 is native on this CPU")
    assert "no AMX" in line and "0.7x" in line and "(picks float32)" in line and "\n" not in line
    line = slow_policy_warning("mixed_float16", SAPPHIRE_RAPIDS, None)  # avx512_fp16: native, yet 250x slower
    assert "float16 is native on this CPU" in line and "250x slower" in line and "(picks mixed_bfloat16)" in line
    assert slow_policy_warning("mixed_bfloat16", SAPPHIRE_RAPIDS, None) is None
    assert slow_policy_warning("mixed_float16", SAPPHIRE_RAPIDS | {"amx_fp16"}, None) is not None  # never measured
    assert slow_policy_warning("mixed_bfloat16", AVX2_ONLY, (8, 0)) is None
    assert "compute capability 7.5" in slow_policy_warning("mixed_bfloat16", AVX2_ONLY, (7, 5))
    for name in ("auto", "float32"):
        assert slow_policy_warning(name, AVX2_ONLY, None) is None
    assert not native_16bit("mixed_bfloat16", AVX2_ONLY) and native_16bit("float32", frozenset())
    assert native_16bit("mixed_bfloat16", COOPER_LAKE) and not faster_than_float32("mixed_bfloat16", COOPER_LAKE)
    assert faster_than_float32("mixed_bfloat16", SAPPHIRE_RAPIDS) and faster_than_float32("float32", AVX2_ONLY)


@pytest.mark.parametrize("flags,expected", [
    (AVX2_ONLY, "auto: no native 16-bit type"),
    (COOPER_LAKE, "auto: bfloat16 is native here but slower than float32 without AMX"),
    (SAPPHIRE_RAPIDS, "auto: native bfloat16"),
])
def test_the_reason_printed_at_start(flags, expected):
    assert dtype_policy_reason("auto", flags, None).startswith(expected)
    assert dtype_policy_reason("float32", flags, None).startswith("as asked")


def _train(tmp_path, policy):
    return subprocess.run(
        [sys.executable, "-m", "keras_ssl.bin.train", "--dataset=digits", "--method=rotation", "--batch_size=16",
         "--epochs=1", "--steps_per_epoch=1", "--augment=none", f"--dtype_policy={policy}",
         f"--model_dir={tmp_path / policy}", "--verbose=0"],
        capture_output=True, text=True, timeout=300, cwd=REPO)


def test_binary_warns_before_training_when_forced(tmp_path):
    expected = slow_policy_warning("mixed_bfloat16")  # this machine's answer
    out = _train(tmp_path, "mixed_bfloat16")
    assert out.returncode == 0, out.stderr[-2000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: --dtype_policy")]
    if expected is None:  # a CPU with native bfloat16
        assert warnings == []
    else:
        assert warnings == [expected]
        assert "trained 1 epoch" in out.stdout  # the warning came first, on stderr, and training went on
    auto = _train(tmp_path, "auto")
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert "warning: --dtype_policy" not in auto.stderr


def test_no_flagfile_names_a_precision():
    files = glob.glob(os.path.join(REPO, "flags", "*.cfg"))
    assert files
    for path in files:
        with open(path) as f:
            text = f.read()
        assert "--dtype_policy" not in text and "--mixed_precision" not in text, path


@pytest.mark.parametrize("value,expected", [(None, "1 True"), ("0", "0 False")])
def test_import_turns_on_onednn_unless_told_not_to(value, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = value
    code = ("import os, keras_ssl\nfrom keras_ssl.precision import onednn_enabled\n"
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    if "x86" not in os.uname().machine and value is None:
        pytest.skip("oneDNN kernels are an x86 build option")
    assert out.stdout.strip().splitlines()[-1] == expected


_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile amx_bf16
bogomips\t: 4000.00

processor\t: 1
model name\t: Another CPU
flags\t\t: fpu sse4_2
"""


@pytest.fixture
def fake_cpuinfo(monkeypatch):
    """/proc/cpuinfo replaced by a given text (None: unreadable) for keras_ssl.precision."""
    import io

    from keras_ssl import precision

    def use(text):
        def fake_open(path, *args, **kwargs):
            assert path == "/proc/cpuinfo", path
            if text is None:
                raise FileNotFoundError(path)
            return io.StringIO(text)

        monkeypatch.setattr(precision, "open", fake_open, raising=False)
        precision._cpuinfo.cache_clear()

    yield use
    precision._cpuinfo.cache_clear()  # the next reader reads the real file again


def test_cpu_flags_are_read(fake_cpuinfo):
    from keras_ssl.precision import cpu_summary

    fake_cpuinfo(_CPUINFO)  # the first processor's flags and model name; the others are the same CPU
    assert cpu_flags() == frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile",
                                     "amx_bf16"})
    assert cpu_summary().startswith("Intel(R) Xeon(R) Platinum 8480+, ")
    assert "avx2 fma avx512f avx512_bf16 amx_tile amx_bf16" in cpu_summary()
    assert resolve_dtype_policy("auto", gpu_capability=None) == "mixed_bfloat16"  # AMX: read from the file
    fake_cpuinfo(None)  # unreadable: no flags, no name, float32
    assert cpu_flags() == frozenset() and cpu_summary().startswith("unknown CPU, ")
    assert resolve_dtype_policy("auto", gpu_capability=None) == "float32"


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo")
def test_cpu_flags_of_this_machine_are_its_first_flags_line():
    with open("/proc/cpuinfo") as f:
        lines = [line for line in f if line.split(":")[0].strip() == "flags"]
    if not lines:
        pytest.skip("this /proc/cpuinfo has no flags line (not x86)")
    assert cpu_flags() == frozenset(lines[0].split(":", 1)[1].split())

