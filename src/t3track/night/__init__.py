"""The night: lock -> recover -> resolve -> install -> gates -> swap -> verify, then record once.

The pipeline itself is t3track.night.pipeline; its steps are the other modules here. This package
imports none of them by itself: `t3track status` reads the drift check (night.drift) and must not
load the installer, the registry client, the notifier and the metrics with it. `run_night`,
`ExactTarget` and `NightReport` are still found here, loaded when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from t3track.night.pipeline import ExactTarget, NightReport, run_night

__all__ = ["ExactTarget", "NightReport", "run_night"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from t3track.night import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
