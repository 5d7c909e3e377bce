"""Images-shown schedule of progressive growing: which resolution, fade-in alpha and minibatch at any point.

Everything is a pure function of the number of real images shown so far (``nimg``), so a resumed
run recomputes its position from the checkpoint's ``nimg`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from .networks import resolutions


@dataclass(frozen=True)
class Phase:
    index: int
    res: int
    kind: str  # "stable" or "fade"
    start_nimg: int
    end_nimg: int

    @property
    def name(self) -> str:
        return f"{self.kind}{self.res}"


@dataclass(frozen=True)
class Position:
    phase: Phase
    res: int
    alpha: float
    batch: int


class Schedule:
    """``stable_kimg`` at 4x4, then for each new resolution ``fade_kimg`` of fade-in and
    ``stable_kimg`` of stable training; an optional ``total_kimg`` beyond that extends the final phase."""

    def __init__(
        self,
        resolution: int,
        stable_kimg: float,
        fade_kimg: float,
        minibatch: dict[int, int],
        total_kimg: float | None = None,
    ):
        self.resolution = resolution
        self.minibatch = {int(k): int(v) for k, v in minibatch.items()}
        res_list = resolutions(resolution)
        for r in res_list:
            if r not in self.minibatch:
                raise ValueError(f"pggan.minibatch has no entry for resolution {r}; add \"{r}\": <batch size>")
        stable, fade = round(stable_kimg * 1000), round(fade_kimg * 1000)
        if stable <= 0 or fade <= 0:
            raise ValueError("pggan.stable_kimg and pggan.fade_kimg must be > 0")
        phases: list[Phase] = []
        t = 0
        for r in res_list:
            if r > 4:
                phases.append(Phase(len(phases), r, "fade", t, t + fade))
                t += fade
            phases.append(Phase(len(phases), r, "stable", t, t + stable))
            t += stable
        self.growth_nimg = t
        if total_kimg is not None:
            total = round(total_kimg * 1000)
            if total < t:
                raise ValueError(
                    f"pggan.total_kimg {total_kimg:g} ends before growth to {resolution} px completes "
                    f"({t / 1000:g} kimg); raise it or leave it null"
                )
            last = phases[-1]
            phases[-1] = Phase(last.index, last.res, last.kind, last.start_nimg, total)
            t = total
        self.phases = phases
        self.total_nimg = t

    def at(self, nimg: int) -> Position:
        """Position of the minibatch that starts after ``nimg`` images (clamped to the last phase)."""
        ph = self.phases[-1]
        for p in self.phases:
            if nimg < p.end_nimg:
                ph = p
                break
        if ph.kind == "fade":
            alpha = min(1.0, max(0.0, (nimg - ph.start_nimg) / (ph.end_nimg - ph.start_nimg)))
        else:
            alpha = 1.0
        return Position(phase=ph, res=ph.res, alpha=alpha, batch=self.minibatch[ph.res])

    def nimg_per_res(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for p in self.phases:
            out[p.res] = out.get(p.res, 0) + p.end_nimg - p.start_nimg
        return out
