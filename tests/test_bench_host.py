"""The benches name their host: CPU model, family / model / stepping and ISA flags from
/proc/cpuinfo (hand-written excerpts of a Zen 4 VM and a Sapphire Rapids Xeon)."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import train_step  # noqa: E402

ZEN4_VM = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni

processor\t: 1
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
"""

XEON = """processor\t: 0
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping\t: 8
flags\t\t: avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_info_names_the_generation_and_the_isa(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4_VM)
    info = train_step.cpu_info(str(path))
    assert info["model"] == "AMD EPYC"
    assert info["family"] == "family 25 model 17 stepping 1"
    assert info["isa"] == ["avx2", "avx512f", "avx512_bf16"]
    path.write_text(XEON)
    info = train_step.cpu_info(str(path))
    assert info["model"].startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert info["family"] == "family 6 model 143 stepping 8"
    assert info["isa"] == ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"]


def test_cpu_info_without_cpuinfo_says_unknown(tmp_path):
    info = train_step.cpu_info(str(tmp_path / "missing"))
    assert info["model"] == "unknown" and info["family"] == "" and info["isa"] == []
