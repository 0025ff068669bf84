"""The simulated GPU of ``greenwatch demo``: a :class:`~greenwatch.agent.gpu.GpuDevice` on a simulated clock."""

from __future__ import annotations

from typing import Callable, Sequence

from greenwatch.agent.gpu import FastReading, GpuDevice, GpuProcess, StatusReading

__all__ = ["SimulatedGpu"]


class SimulatedGpu(GpuDevice):
    """A GPU on a simulated clock: power is ``power_w(t)``, the counter its exact integral.

    ``integral_j(t0, t1)`` must return the energy between two times so the counter is exact
    however the clock jumps.
    """

    def __init__(self, uuid: str, index: int, name: str, clock: Callable[[], float],
                 power_w: Callable[[float], float], integral_j: Callable[[float, float], float],
                 processes: Callable[[float], Sequence[GpuProcess]], util: Callable[[float], float],
                 power_limit_w: float = 700.0) -> None:
        self.uuid, self.index, self.name = uuid, index, name
        self.has_counter = True
        self.power_limit_w = power_limit_w
        self._clock, self._power, self._integral, self._procs, self._util = clock, power_w, integral_j, processes, util
        self._t0 = clock()

    def read_fast(self) -> FastReading:
        t = self._clock()
        return FastReading(int(round(t * 1e6)), int(self._integral(self._t0, t) * 1000), int(self._power(t) * 1000))

    def read_status(self) -> StatusReading:
        t = self._clock()
        p = self._power(t)
        util = int(self._util(t))
        return StatusReading(util, util // 2, 1024 + util * 700, int(30 + p / 12), 1980 if util else 345)

    def processes(self) -> list[GpuProcess]:
        return list(self._procs(self._clock()))
