"""The saturating power law of scaling studies, acc(x) = a - b * x**(-c), and where it saturates.

Fit by least squares: for a fixed exponent c the model is linear in (a, b), so (a, b) have a
closed form and only c is searched (a log grid, then a bounded scalar minimisation). This finds
the global least-squares optimum over c in [C_MIN, C_MAX] without a starting guess.

A curve counts as saturated at x when doubling x gains less than SATURATION_POINTS (in points:
metric x 100) by the fit: gain(x) = b * x**(-c) * (1 - 2**(-c)).
"""

import dataclasses
import math

import numpy as np

C_MIN, C_MAX = 1e-3, 5.0
SATURATION_POINTS = 0.5


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """acc(x) = a - b * x**(-c) fitted to points; rmse is in the metric's units."""

    a: float
    b: float
    c: float
    rmse: float
    points: int

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.a - self.b * np.power(x, -self.c)

    def doubling_gain(self, x: float) -> float:
        """acc(2x) - acc(x), in the metric's units."""
        return self.b * x ** (-self.c) * (1.0 - 2.0 ** (-self.c))

    def saturation_x(self, points: float = SATURATION_POINTS) -> float:
        """The x beyond which doubling gains less than `points` / 100 (0 for a flat or falling fit):
        b x^-c (1 - 2^-c) < t  <=>  x > (b (1 - 2^-c) / t)^(1/c)."""
        scale = self.b * (1.0 - 2.0 ** (-self.c))
        if scale <= 0:
            return 0.0
        exponent = math.log(scale / (points / 100.0)) / self.c
        return math.exp(exponent) if exponent < 700 else math.inf  # a near-flat exponent: never


def _solve_ab(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """Weighted least squares of y = a - b z: (a, b, sum of squared residuals)."""
    design = np.stack([np.ones_like(z), -z], axis=1) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(design, y * w, rcond=None)
    residual = (a - b * z - y) * w
    return float(a), float(b), float(residual @ residual)


def fit_power_law(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> PowerLaw:
    """Least-squares fit of acc(x) = a - b x^-c; needs at least 3 distinct positive x (ValueError)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64))
    if np.any(x <= 0) or len(np.unique(x)) < 3:
        raise ValueError("a saturating power law needs at least 3 distinct positive x values")
    x0 = float(np.min(x))  # x/x0 >= 1 keeps z = (x/x0)^-c in (0, 1]: well conditioned
    u = x / x0

    def loss(log_c: float) -> float:
        return _solve_ab(u ** -math.exp(log_c), y, w)[2]

    grid = np.linspace(math.log(C_MIN), math.log(C_MAX), 400)
    losses = [loss(g) for g in grid]
    best = int(np.argmin(losses))
    log_c = float(grid[best])
    try:
        from scipy.optimize import minimize_scalar
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        refined = minimize_scalar(loss, bounds=(lo, hi), method="bounded",
                                  options={"xatol": 1e-10})
        if refined.fun <= losses[best]:
            log_c = float(refined.x)
    except ImportError:  # scipy comes with jax; the grid alone is within 2% in c
        pass
    c = math.exp(log_c)
    a, b_scaled, sse = _solve_ab(u ** -c, y, w)
    b = b_scaled * x0 ** c  # back to raw x: b (x/x0)^-c = (b x0^c) x^-c
    return PowerLaw(a=a, b=b, c=c, rmse=math.sqrt(sse / len(x)), points=len(x))


def describe_saturation(fit: PowerLaw, x_max: float, unit: str = "") -> str:
    """One sentence: saturated or not at the largest measured x, and from where by the fit."""
    if fit.b <= 0:
        return "does not rise with x (the fit is flat or falling): no saturation to speak of"
    if fit.c < 1.5 * C_MIN:
        return (f"no ceiling in sight: the points rise like log x (the fitted exponent c is at its "
                f"bound {C_MIN:g}), so the fit cannot say where it saturates")
    gain = 100.0 * fit.doubling_gain(x_max)
    x_sat = fit.saturation_x()
    where = f"{x_sat:.3g}{unit}"
    if gain < SATURATION_POINTS:
        return (f"saturated: doubling the largest x ({x_max:.3g}{unit}) adds {gain:.2f} points "
                f"(< {SATURATION_POINTS}); the fit saturates from about {where}")
    return (f"not saturated: doubling the largest x ({x_max:.3g}{unit}) would add {gain:.2f} points; "
            f"the fit saturates around {where} (extrapolated), ceiling a = {100 * fit.a:.1f}")
