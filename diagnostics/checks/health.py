"""The `health` check: temperature, active clock slowdowns (thermal, power cap) and uncorrected ECC
errors on the GPUs a run would use.
"""

from __future__ import annotations

from diagnostics.checks.base import Context, Finding, fail, passed, see, skip, warn

# A policy threshold, not a measured limit: GeForce and data-centre cards start slowing down from
# roughly the mid-80s °C, so 85 °C leaves time to act before the clocks drop.
HOT_C = 85.0
_REASON_WORDS = {
    "hw_thermal_slowdown": "hardware thermal slowdown",
    "sw_thermal_slowdown": "software thermal slowdown",
    "hw_slowdown": "hardware slowdown (power brake or overheating)",
    "hw_power_brake_slowdown": "external power brake",
    "sw_power_cap": "power cap",
}


def health(ctx: Context) -> list[Finding]:
    """Temperature, active throttle reasons and uncorrected ECC errors."""
    gpus = ctx.in_scope
    if not gpus:
        return [skip("no GPU to check")]
    findings = []
    for gpu in gpus:
        if gpu.ecc_uncorrected_volatile:
            findings.append(
                fail(
                    f"{gpu.label()} has {gpu.ecc_uncorrected_volatile} uncorrected ECC error(s) "
                    "since the driver "
                    "loaded: its results cannot be trusted",
                    "leave it out (--device-mode custom --custom-gpus ...), reset it (nvidia-smi -r -i "
                    f"{gpu.index}) or reboot; if errors come back, have the card replaced "
                    f"{see('hot-or-throttling-gpus')}",
                    gpus=(gpu.index,),
                )
            )
        reasons = [r for r in gpu.clocks_event_reasons or () if r in _REASON_WORDS]
        hot = gpu.temperature_c is not None and gpu.temperature_c >= HOT_C
        if reasons or hot:
            parts = []
            if gpu.temperature_c is not None:
                parts.append(f"{gpu.temperature_c:g} °C")
            if reasons:
                parts.append("clocks held back by " + ", ".join(_REASON_WORDS[r] for r in reasons))
            if "sw_power_cap" in reasons and gpu.power_draw_w is not None and gpu.power_limit_w:
                parts.append(f"drawing {gpu.power_draw_w:g} of {gpu.power_limit_w:g} W")
            findings.append(
                warn(
                    f"{gpu.label()}: "
                    + ", ".join(parts)
                    + ": it runs slower than the others and sets the pace",
                    "improve airflow (fan curve, case fans, spacing between cards), check the power limit "
                    f"(nvidia-smi -q -d POWER) and the power supply {see('hot-or-throttling-gpus')}",
                    gpus=(gpu.index,),
                )
            )
    if findings:
        return findings
    temps = ", ".join(
        f"GPU {g.index} {g.temperature_c:g} °C" if g.temperature_c is not None else f"GPU {g.index} n/a"
        for g in gpus
    )
    return [passed(f"{temps}; no slowdown, no uncorrected ECC errors", gpus=tuple(g.index for g in gpus))]
