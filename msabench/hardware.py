"""Hardware and numeric back-end of a run: what decides the last bits of its floating point.

Two runs of the same code, seed and thread count give bit-identical numbers when these agree; on another CPU type
or GPU, torch picks other kernels (another instruction set, another BLAS code path) and training amplifies the
rounding differences. ``hardware_info`` collects the facts, ``hardware_id`` is a short hash of them for the rows.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

# instruction-set flags (from /proc/cpuinfo) that change which kernels torch, MKL and oneDNN dispatch to
SIMD_FLAGS = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx_vnni|avx512\w*|amx\w*)$")
UNKNOWN = "unknown"


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as ``{key: value}``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model, vendor, architecture, logical cores and its SIMD flags (Linux: /proc/cpuinfo; macOS: sysctl)."""
    model, vendor, flags = "", "", []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        try:
            fields = _cpuinfo_fields(cpuinfo.read_text(errors="replace"))
        except OSError:
            fields = {}
        model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or ""
        vendor = fields.get("vendor_id") or fields.get("CPU implementer") or ""
        flags = sorted(f for f in (fields.get("flags") or fields.get("Features") or "").split() if SIMD_FLAGS.match(f))
    elif platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
    return {
        "cpu_model": model or platform.processor() or UNKNOWN,
        "cpu_vendor": vendor or UNKNOWN,
        "cpu_arch": platform.machine() or UNKNOWN,
        "cpu_count": os.cpu_count(),
        "cpu_simd_flags": flags,
    }


def _config_value(config: str, key: str) -> str:
    match = re.search(rf"\b{key}=([^,\s]+)", config)
    return match.group(1) if match else ""


def _library_line(config: str, marker: str) -> str:
    for line in config.splitlines():
        if marker in line:
            return line.strip(" -")
    return ""


@functools.lru_cache(maxsize=1)
def backend_info() -> dict[str, Any]:
    """torch's CPU kernel dispatch level and the BLAS / MKL / oneDNN / OpenMP it was built with."""
    config = torch.__config__.show()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = UNKNOWN
    parallel = torch.__config__.parallel_info()
    backend = re.search(r"ATen parallel backend: (.+)", parallel)
    return {
        "cpu_capability": capability,
        "blas": _config_value(config, "BLAS_INFO") or UNKNOWN,
        "lapack": _config_value(config, "LAPACK_INFO") or UNKNOWN,
        "mkl": _library_line(config, "Math Kernel Library") if torch.backends.mkl.is_available() else "",
        "mkldnn": _library_line(config, "MKL-DNN") if torch.backends.mkldnn.is_available() else "",
        "openmp": bool(torch.backends.openmp.is_available()),
        "parallel_backend": backend.group(1).strip() if backend else UNKNOWN,
    }


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        match = re.search(r"Kernel Module\s+([\d.]+)", Path("/proc/driver/nvidia/version").read_text())
        return match.group(1) if match else UNKNOWN
    except OSError:
        return UNKNOWN


@functools.lru_cache(maxsize=8)
def gpu_info(device: str) -> dict[str, Any]:
    """GPU name, compute capability, driver, CUDA and cuDNN versions of a CUDA device; empty for other devices."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return {}
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu_name": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_driver": _nvidia_driver(),
        "cuda_version": torch.version.cuda or UNKNOWN,
        "cudnn_version": str(cudnn) if cudnn else UNKNOWN,
    }


# fields that decide the numbers; cpu_count only sets the default thread count (recorded separately)
ID_FIELDS = ("cpu_model", "cpu_vendor", "cpu_arch", "cpu_simd_flags", "cpu_capability", "blas", "lapack", "mkl",
             "mkldnn", "mkldnn_enabled", "parallel_backend", "gpu_name", "gpu_capability", "gpu_driver",
             "cuda_version", "cudnn_version", "tf32_matmul", "tf32_cudnn")


def hardware_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Everything above for a run on ``device`` (GPU facts only for CUDA), with the switches as they are now."""
    info = {**cpu_info(), **backend_info(),
            "mkldnn_enabled": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)}
    gpu = dict(gpu_info(str(device)))
    if gpu:
        gpu.update(tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
                   tf32_cudnn=bool(torch.backends.cudnn.allow_tf32))
    return {**info, **gpu}


def hardware_id(info: dict[str, Any]) -> str:
    """Short hash of the fields of ``info`` that decide floating-point results (same id: same kernels)."""
    ident = {k: info.get(k) for k in ID_FIELDS if k in info}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]


def hardware_summary(info: dict[str, Any] | None) -> str:
    """One line for people: ``AMD EPYC (x86_64, AVX2, BLAS mkl)`` plus the GPU when there is one."""
    if not info:
        return UNKNOWN
    text = f"{info.get('cpu_model', UNKNOWN)} ({info.get('cpu_arch', UNKNOWN)}, {info.get('cpu_capability', UNKNOWN)}, " \
           f"BLAS {info.get('blas', UNKNOWN)})"
    if info.get("gpu_name"):
        text += f"; {info['gpu_name']}, driver {info.get('gpu_driver', UNKNOWN)}, CUDA {info.get('cuda_version')}, " \
                f"cuDNN {info.get('cudnn_version')}"
    return text


def hardware_provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The run.json fields: ``hardware`` (full detail) and ``hardware_id`` (also a row column)."""
    info = hardware_info(device)
    return {"hardware": info, "hardware_id": hardware_id(info)}
