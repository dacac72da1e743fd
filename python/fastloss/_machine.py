"""What the machine and this build are: the CPU, its memory and caches, OpenMP, installed
versions. Read when asked (never at import), for ``python -m fastloss info`` and the benchmark
report, so that ``info`` needs nothing of ``fastloss.bench``.
"""

from __future__ import annotations

import platform

_OPENMP_RELEASES = {201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0", 202011: "5.1",
                    202111: "5.2", 202411: "6.0"}


def cpu_family() -> str:
    """'family 23 model 1' (x86 Linux), which names the microarchitecture; '' elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return ""
    if "cpu family" not in fields:
        return ""
    return f"family {fields['cpu family']} model {fields.get('model', '?')}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def memory_description() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            kib = int(meminfo.readline().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "memory unknown"


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), or 32 MiB when it cannot be read."""
    sizes = []
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size",
                      encoding="ascii") as file:
                text = file.read().strip()
        except OSError:
            break
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=32 * 2**20)


def openmp_description(info: dict) -> str:
    """OpenMP as ``fastloss._cpu.build_info()`` reports it: 'on, OpenMP 4.5 (201511)'."""
    if not info["openmp"]:
        return "off (single thread)"
    version = info["openmp_version"]
    release = _OPENMP_RELEASES.get(version)
    return f"on, OpenMP {release} ({version})" if release else f"on ({version})"


def package_version(name: str):
    """The installed version of ``name`` without importing it (importing torch takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None
