"""Realistic fleet generator: a Rotterdam-like network and one day of Dutch public charging.

:func:`generate_scenario` returns a ``gridcharge.scenario/1`` dict (see ``docs/formats.md``)
built from the ElaadNL public-charging statistics shipped in ``simulation/data/elaad_public.json``
(``docs/fleet.md`` explains the model and lists the statistics it reproduces):

1. **Network.** DSO regions of about 1,000 stations (roots), subclusters of 20–100 stations with
   a transformer/feeder rating ``limit_kw``, stations of 2 × 16 A three-phase connectors behind a
   25 A per phase station limit.
2. **Sessions.** Per connector a Poisson stream of candidate arrivals is thinned so that
   sessions never overlap (a candidate that arrives while the connector is taken is dropped); the
   candidate rate per 15-minute slot is chosen so that the *accepted* arrivals follow the ElaadNL
   arrival distribution. Stay and energy are monotone maps of standard-normal scores, fitted per
   arrival half-hour so that the mixture over arrivals reproduces ElaadNL's distribution, the
   means follow ElaadNL's means by arrival time and the spread within a half-hour is one common
   coefficient of variation; a Gaussian copula couples the two scores. Energy is capped by what
   the car can take during its stay. Two warm-up days put the cars that are still plugged in at
   midnight on the connectors.
3. **DSO profiles.** A cap per region of ``dso_scale`` × the region's uncontrolled peak, lowered
   in the evening, and a valley-filling target with the region's uncontrolled energy. Where even
   the cars' minimum currents cannot stay under a cap or a subcluster rating (checked with the
   greedy schedule), the cap or rating is raised just enough (:func:`make_limits_feasible`), as
   a DSO sets its profile on the flexible load it can actually ask for.

Everything is drawn from one ``numpy.random.Generator(PCG64(seed))``: the same arguments give a
byte-identical JSON dump.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from scipy.special import ndtr, ndtri

from optimizer.scenario import SCENARIO_FORMAT
from optimizer.uncontrolled import uncontrolled_node_power_kw

TZ = ZoneInfo("Europe/Amsterdam")
DEFAULT_DATE = dt.date(2026, 11, 25)
"""A Wednesday; the default keeps the output deterministic."""

VOLTAGE_V = 230.0
CONNECTOR_LIMIT_A = 16.0
STATION_LIMIT_A = 25.0
MIN_CURRENT_A = 8.0
LOW_MIN_CURRENT_A = 6.0
LOW_MIN_SHARE = 0.10
"""Share of stations whose minimum current is the IEC 61851 value (6 A) instead of 8 A."""
PHASES = ("L1", "L2", "L3")

STATIONS_PER_REGION = 1000
SUBCLUSTER_SIZE = (20, 100)
"""Smallest and largest number of stations in a subcluster (a transformer or feeder)."""
SUBCLUSTER_KW_PER_CONNECTOR = (1.75, 2.75)
"""Range [kW] of a subcluster rating per connector below it (see :func:`build_network`)."""

SESSIONS_PER_CONNECTOR = 1.45
"""Mean number of sessions [1/day] that arrive at one connector on the day."""
STAY_ENERGY_SPEARMAN = 0.40
"""Spearman rank correlation [-] of stay and (capped) energy within one arrival hour."""
PILOT_SEED = 20_261_125
"""Seed of the fixed pilot sample that calibrates the energy model (see :func:`day_model`)."""
PILOT_DRAWS = 60_000
CALIBRATION_ROUNDS = 8
OPT_OUT_SHARE = 0.02
WARMUP_DAYS = 2
"""Days simulated before the day so that cars plugged in overnight are on their connectors."""
STAY_FLOOR_H = 2.0 / 60.0
"""Shortest stay [h]; ElaadNL lists 1 % of public sessions at 0 h."""
ENERGY_FLOOR_KWH = 0.1
"""Smallest energy [kWh] before the caps; ElaadNL lists 3 % of public sessions at 0 kWh."""

DIP_HOURS = (17, 21)
"""Local hours [h] of the DSO's evening dip (start inclusive, end exclusive)."""
DIP_FACTOR = 0.85
TARGET_SWING = 0.25
"""Relative amplitude of the valley-filling target (highest at 03:00, lowest at 15:00)."""

_SLOT_S = 900
_SLOTS = 96
_DAY_S = 86_400


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ElaadPublic:
    """ElaadNL public-charging statistics (from ``simulation/data/elaad_public.json``).

    Attributes
    ----------
    arrival_weekday, arrival_weekend : numpy.ndarray
        Share of arrivals per 15-minute local slot from 00:00 [-], 96 values summing to 1.
    stay_u, stay_h : numpy.ndarray
        Quantile table of the connection time: ``stay_h`` [h] at non-exceedance ``stay_u`` [-].
    energy_u, energy_kwh : numpy.ndarray
        Quantile table of the energy per session [kWh].
    mean_stay_h, mean_energy_kwh : numpy.ndarray
        Mean stay [h] and energy [kWh] by half-hour of arrival from 00:00, 48 values each.
    car_share : numpy.ndarray
        Share of each EV model by Dutch registrations [-].
    car_battery_kwh, car_ac_kw : numpy.ndarray
        Battery [kWh] and maximum AC power [kW] of each model.
    car_phases : numpy.ndarray
        Phases (1 or 3) each model charges on.
    """

    arrival_weekday: np.ndarray
    arrival_weekend: np.ndarray
    stay_u: np.ndarray
    stay_h: np.ndarray
    energy_u: np.ndarray
    energy_kwh: np.ndarray
    mean_stay_h: np.ndarray
    mean_energy_kwh: np.ndarray
    car_share: np.ndarray
    car_battery_kwh: np.ndarray
    car_ac_kw: np.ndarray
    car_phases: np.ndarray

    @property
    def one_phase_share(self) -> float:
        """Share of 1-phase cars [-], weighted by registrations."""
        return float(self.car_share[self.car_phases == 1].sum())

    def arrival_share(self, day: dt.date) -> np.ndarray:
        """Arrival share per 15-minute slot [-] on ``day`` (weekend table on Sat/Sun)."""
        return self.arrival_weekend if day.weekday() >= 5 else self.arrival_weekday


def _quantile_table(exceedance: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(non-exceedance probability, value), increasing, from values exceeded by 0..100 %."""
    values = np.asarray(exceedance, dtype=float)[::-1]
    u = np.arange(values.size, dtype=float) / (values.size - 1)
    return u, np.maximum.accumulate(values)


def params_from_dict(raw: dict[str, Any]) -> ElaadPublic:
    """Turn the content of ``elaad_public.json`` into arrays (shares normalised to 1)."""
    weekday = np.asarray(raw["arrival_pct"]["weekday"], dtype=float)
    weekend = np.asarray(raw["arrival_pct"]["weekend"], dtype=float)
    models = raw["ev"]["models"]
    reg = np.array([m["registrations"] for m in models], dtype=float)
    stay_u, stay_h = _quantile_table(raw["connection_time_h"]["values"])
    energy_u, energy_kwh = _quantile_table(raw["energy_kwh"]["values"])
    return ElaadPublic(
        arrival_weekday=weekday / weekday.sum(),
        arrival_weekend=weekend / weekend.sum(),
        stay_u=stay_u,
        stay_h=stay_h,
        energy_u=energy_u,
        energy_kwh=energy_kwh,
        mean_stay_h=np.asarray(raw["mean_stay_h_by_arrival"]["values"], dtype=float),
        mean_energy_kwh=np.asarray(raw["mean_energy_kwh_by_arrival"]["values"], dtype=float),
        car_share=reg / reg.sum(),
        car_battery_kwh=np.array([m["battery_kwh"] for m in models], dtype=float),
        car_ac_kw=np.array([m["max_ac_kw"] for m in models], dtype=float),
        car_phases=np.array([m["phases"] for m in models], dtype=int),
    )


@lru_cache(maxsize=1)
def load_params() -> ElaadPublic:
    """The shipped ElaadNL parameters (``simulation/data/elaad_public.json``)."""
    text = resources.files("simulation").joinpath("data/elaad_public.json").read_text("utf-8")
    return params_from_dict(json.loads(text))


# --------------------------------------------------------------------------- stay and energy


@dataclass(frozen=True)
class LatentMixture:
    """Stay or energy by arrival half-hour ``h``: ``X = Q(Φ_mix(μ_h + s_h·ε))``, ``ε ~ N(0, 1)``.

    ``Q`` is the ElaadNL quantile function and ``Φ_mix(x) = Σ_h p_h Φ((x − μ_h) / s_h)`` the law
    of the latent ``μ_h + s_h ε`` over all arrivals, so the mixture over the arrival distribution
    ``p`` reproduces the ElaadNL distribution exactly, whatever ``μ`` and ``s``.
    :func:`fit_latent_mixture` chooses ``μ_h`` for the mean by arrival half-hour and ``s_h`` for
    one common coefficient of variation within every half-hour. Values are monotone in ``ε``, so
    a Gaussian copula on ``ε`` sets their rank correlation.

    Attributes
    ----------
    mu, s : numpy.ndarray
        Latent location and scale per arrival half-hour from 00:00 [-], 48 values each.
    x, cdf : numpy.ndarray
        ``Φ_mix`` [-] tabulated at latent values ``x`` [-].
    u, v : numpy.ndarray
        Quantile table: value ``v`` [unit] at non-exceedance probability ``u`` [-], floored.
    mean : numpy.ndarray
        Target mean per arrival half-hour [unit].
    cv : float
        Target coefficient of variation within a half-hour [-].
    """

    mu: np.ndarray
    s: np.ndarray
    x: np.ndarray
    cdf: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mean: np.ndarray
    cv: float

    def value(self, half_hour: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """Value [unit] for arrivals in ``half_hour`` at standard-normal scores ``eps`` [-]."""
        z = self.mu[half_hour] + self.s[half_hour] * eps
        return np.interp(np.interp(z, self.x, self.cdf), self.u, self.v)

    def survival(self, half_hour: np.ndarray, value: np.ndarray) -> np.ndarray:
        """``P(X > value)`` [-] for arrivals in ``half_hour``."""
        z = np.interp(np.interp(value, self.v, self.u), self.cdf, self.x)
        return 1.0 - ndtr((z - self.mu[half_hour]) / self.s[half_hour])


def _table_moments(u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Mean and mean square [unit, unit²] of a piecewise-linear quantile function."""
    du, a, b = np.diff(u), v[:-1], v[1:]
    return float((du * (a + b) / 2).sum()), float((du * (a * a + a * b + b * b) / 3).sum())


def fit_latent_mixture(
    u: np.ndarray,
    v: np.ndarray,
    mean_by_half_hour: np.ndarray,
    arrival_share: np.ndarray,
    floor: float,
    iterations: int = 40,
    n_eps: int = 600,
    n_x: int = 2000,
) -> LatentMixture:
    """Fit :class:`LatentMixture` to a quantile table and a mean profile by arrival half-hour.

    The means by arrival are used as a *profile*: they are rescaled so that their
    arrival-weighted average equals the mean of the table (ElaadNL's means by arrival come from
    another sample than its distributions). With the marginal and the means fixed, the law of
    total variance fixes the average within-half-hour variance; the fit spreads it as one
    common coefficient of variation ``κ``::

        κ² = (E[X²] − Σ_h p_h m_h²) / Σ_h p_h m_h²

    The fixed-point iteration moves ``μ_h`` by the latent distance between the target and the
    current mean and scales ``s_h`` by ``(κ / cv_h)^½``; conditional moments are computed on
    ``n_eps`` equal-probability points.

    Parameters
    ----------
    u, v : numpy.ndarray
        Quantile table: value ``v`` [unit] at non-exceedance probability ``u`` [-].
    mean_by_half_hour : numpy.ndarray
        Mean [unit] by arrival half-hour from 00:00 (48).
    arrival_share : numpy.ndarray
        Arrival share per 15-minute slot [-] (96), summing to 1.
    floor : float
        Smallest value [unit]; the table is clipped to it.
    iterations, n_eps, n_x : int
        Fixed-point iterations, probability points and latent grid size.

    Returns
    -------
    LatentMixture
    """
    p = arrival_share.reshape(-1, 2).sum(axis=1)
    vv = np.maximum(v, floor)
    mean_t, square_t = _table_moments(u, vv)
    mean = mean_by_half_hour * mean_t / float(p @ mean_by_half_hour)
    kappa = math.sqrt((square_t - float(p @ mean**2)) / float(p @ mean**2))
    eps = ndtri((np.arange(n_eps) + 0.5) / n_eps)
    mu, s = np.zeros(p.size), np.ones(p.size)

    def table(mu: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.linspace(float((mu - 8.5 * s).min()), float((mu + 8.5 * s).max()), n_x)
        return x, p @ ndtr((x[None, :] - mu[:, None]) / s[:, None])

    for _ in range(iterations):
        x, cdf = table(mu, s)
        val = np.interp(np.interp(mu[:, None] + s[:, None] * eps, x, cdf), u, vv)
        c = val.mean(axis=1)
        cv = val.std(axis=1) / c
        mu = mu + 0.5 * (
            np.interp(np.interp(mean, vv, u), cdf, x) - np.interp(np.interp(c, vv, u), cdf, x)
        )
        s = s * np.sqrt(kappa / cv)
        scale = math.exp(float(p @ np.log(s)))  # fix the free shift and scale of the latent
        mu, s = (mu - float(p @ mu)) / scale, s / scale
    x, cdf = table(mu, s)
    return LatentMixture(mu=mu, s=s, x=x, cdf=cdf, u=u, v=vv, mean=mean, cv=kappa)


def car_power_kw(car: np.ndarray) -> np.ndarray:
    """Charging power [kW] of EV models on a 16 A three-phase connector.

    ``min(max AC power, 16 A × phases × 230 V)``: a 1-phase car gets at most 3.7 kW.
    """
    prm = load_params()
    return np.minimum(prm.car_ac_kw[car], CONNECTOR_LIMIT_A * prm.car_phases[car] * VOLTAGE_V / 1e3)


def cap_energy(energy_kwh: np.ndarray, stay_h: np.ndarray, car: np.ndarray) -> np.ndarray:
    """Energy [kWh] capped by what the car takes during its stay [h] and by its battery."""
    prm = load_params()
    return np.minimum(np.minimum(energy_kwh, car_power_kw(car) * stay_h), prm.car_battery_kwh[car])


def within_group_spearman(group: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation [-] of ``x`` and ``y`` within groups, averaged by group size.

    Ties get distinct ranks in data order, which is close enough for continuous data.
    """

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.lexsort((v, group))
        count = np.bincount(group)
        first = np.concatenate([[0], np.cumsum(count)[:-1]])
        r = np.empty(v.size)
        r[order] = np.arange(v.size) - np.repeat(first, count)
        return r

    rx, ry = ranks(x), ranks(y)
    n = np.bincount(group).astype(float)
    ok = n >= 3
    sx, sy = np.bincount(group, rx), np.bincount(group, ry)
    cov = np.bincount(group, rx * ry) - sx * sy / np.maximum(n, 1)
    vx = np.bincount(group, rx * rx) - sx * sx / np.maximum(n, 1)
    vy = np.bincount(group, ry * ry) - sy * sy / np.maximum(n, 1)
    rho = np.where(ok & (vx > 0) & (vy > 0), cov / np.sqrt(np.maximum(vx * vy, 1e-300)), 0.0)
    return float((rho * n)[ok].sum() / n[ok].sum())


@dataclass(frozen=True)
class DayModel:
    """Stay and energy models for one day type (weekday or weekend).

    Attributes
    ----------
    stay_h : LatentMixture
        Stay [h] by arrival half-hour.
    energy_kwh : LatentMixture
        Energy [kWh] *before* the caps of :func:`cap_energy`, calibrated so that the capped
        energy follows ElaadNL.
    rho : float
        Correlation of the Gaussian copula of the stay and energy scores [-], calibrated so that
        the capped energy has the Spearman correlation :data:`STAY_ENERGY_SPEARMAN` with the stay
        within an arrival hour.
    """

    stay_h: LatentMixture
    energy_kwh: LatentMixture
    rho: float


def _moving_average(v: np.ndarray, half_width: int) -> np.ndarray:
    padded = np.pad(v, half_width, mode="edge")
    return np.convolve(padded, np.full(2 * half_width + 1, 1.0 / (2 * half_width + 1)), "valid")


@lru_cache(maxsize=2)
def day_model(weekend: bool) -> DayModel:
    """The fitted stay and energy models for a weekday or a weekend day (cached).

    Both are :func:`fit_latent_mixture` on ElaadNL. Capping the energy by what the car can take
    during a short stay (:func:`cap_energy`) lowers it and raises its rank correlation with the
    stay, so the energy table and the copula correlation are then calibrated on a fixed pilot
    sample of :data:`PILOT_DRAWS` arrivals (with its own seed, so the result does not depend
    on the caller's). Each of :data:`CALIBRATION_ROUNDS` rounds multiplies the energy table by
    ``(target / capped quantile)^0.7``, smoothed over ±5 percentiles and taken from the
    10–95 % band (below 10 % very short stays cap the energy whatever the table says), and moves
    the latent Spearman correlation by target − measured.
    """
    prm = load_params()
    share = prm.arrival_weekend if weekend else prm.arrival_weekday
    stay = fit_latent_mixture(prm.stay_u, prm.stay_h, prm.mean_stay_h, share, STAY_FLOOR_H)
    target = fit_latent_mixture(
        prm.energy_u, prm.energy_kwh, prm.mean_energy_kwh, share, ENERGY_FLOOR_KWH
    )
    rng = np.random.Generator(np.random.PCG64(PILOT_SEED))
    half_hour = rng.choice(_SLOTS, size=PILOT_DRAWS, p=share) // 2
    z = rng.standard_normal((2, PILOT_DRAWS))
    car = rng.choice(prm.car_share.size, size=PILOT_DRAWS, p=prm.car_share)
    stay_h = stay.value(half_hour, z[0])

    u = prm.energy_u
    band = (u >= 0.10) & (u <= 0.95)
    log_gain = np.zeros(u.size)
    spearman = STAY_ENERGY_SPEARMAN
    energy, rho = target, 0.0
    for _ in range(CALIBRATION_ROUNDS):
        energy = replace(target, v=np.maximum.accumulate(target.v * np.exp(log_gain)))
        rho = 2.0 * math.sin(math.pi / 6.0 * spearman)
        eps = rho * z[0] + math.sqrt(1.0 - rho * rho) * z[1]
        capped = cap_energy(energy.value(half_hour, eps), stay_h, car)
        got = np.quantile(capped, u)
        error = np.interp(u, u[band], np.log(target.v[band] / got[band]))
        log_gain = np.clip(log_gain + 0.7 * _moving_average(error, 5), -0.7, 1.1)
        measured = within_group_spearman(half_hour // 2, stay_h, capped)
        spearman = min(max(spearman + STAY_ENERGY_SPEARMAN - measured, 0.0), 0.95)
    return DayModel(stay_h=stay, energy_kwh=energy, rho=rho)


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class Network:
    """The generated grid tree and stations (scenario dict pieces plus index arrays).

    Attributes
    ----------
    nodes : list[dict]
        Scenario ``nodes``: regions (roots) then their subclusters.
    stations : list[dict]
        Scenario ``stations`` with their two connectors each.
    region_ids : list[str]
        Ids of the root nodes.
    connector_ids : list[str]
        All connector ids, station by station (connector ``c`` is on station ``c // 2``).
    """

    nodes: list[dict[str, Any]]
    stations: list[dict[str, Any]]
    region_ids: list[str]
    connector_ids: list[str]


def subcluster_sizes(n: int, rng: np.random.Generator) -> list[int]:
    """Split ``n`` stations into subclusters of random sizes in :data:`SUBCLUSTER_SIZE`.

    Sizes are uniform integers; a last remainder below the smallest size joins the previous
    subcluster when that stays within the largest size, else it remains the one smaller
    subcluster (also when ``n`` itself is below the smallest size).
    """
    lo, hi = SUBCLUSTER_SIZE
    sizes: list[int] = []
    left = n
    while left > 0:
        k = min(int(rng.integers(lo, hi + 1)), left)
        sizes.append(k)
        left -= k
    if len(sizes) > 1 and sizes[-1] < lo and sizes[-2] + sizes[-1] <= hi:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


def build_network(stations: int, rng: np.random.Generator) -> Network:
    """A Rotterdam-like network of ``stations`` two-connector stations.

    - DSO regions of about :data:`STATIONS_PER_REGION` stations (one region below 1,500), as
      root nodes ``region-01`` ...; stations are split over them as evenly as possible.
    - Subclusters ``region-01/sc-001`` ... of 20–100 stations (:func:`subcluster_sizes`), each
      with a rating ``limit_kw`` of U(1.75, 2.75) kW per connector below it, rounded to 5 kW: the
      share of a feeder's or transformer's capacity left for public charging, sized with an
      after-diversity simultaneity of 16–25 % of the 11 kW a connector can draw. Uncontrolled
      charging peaks at about 1.5 kW per connector over a region, more in small subclusters,
      so the rating binds in the evening in roughly one subcluster in five.
    - Stations ``st-00001`` ...: 25 A per phase, minimum current 8 A (6 A at
      :data:`LOW_MIN_CURRENT_A` for a random :data:`LOW_MIN_SHARE`), two 16 A three-phase
      connectors ``{id}-1`` and ``{id}-2``. The phase a 1-phase car draws on rotates: station
      ``k`` (from 0) has its connectors on ``L(k mod 3 + 1)`` and the next phase.

    Parameters
    ----------
    stations : int
        Number of stations (≥ 1).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    Network
    """
    if stations < 1:
        raise ValueError(f"stations: must be at least 1 (got {stations})")
    n_regions = max(1, math.floor(stations / STATIONS_PER_REGION + 0.5))
    base, extra = divmod(stations, n_regions)
    width = max(5, len(str(stations)))
    low_min = rng.random(stations) < LOW_MIN_SHARE
    nodes: list[dict[str, Any]] = []
    station_list: list[dict[str, Any]] = []
    region_ids: list[str] = []
    connector_ids: list[str] = []
    k = 0
    for r in range(n_regions):
        rid = f"region-{r + 1:02d}"
        region_ids.append(rid)
        nodes.append({"id": rid, "parent": None})
        sizes = subcluster_sizes(base + (1 if r < extra else 0), rng)
        kw_per_connector = rng.uniform(*SUBCLUSTER_KW_PER_CONNECTOR, size=len(sizes))
        for j, size in enumerate(sizes):
            sc = f"{rid}/sc-{j + 1:03d}"
            limit_kw = max(5.0, 5.0 * round(2 * size * float(kw_per_connector[j]) / 5.0))
            nodes.append({"id": sc, "parent": rid, "limit_kw": limit_kw})
            for _ in range(size):
                sid = f"st-{k + 1:0{width}d}"
                c1, c2 = f"{sid}-1", f"{sid}-2"
                station_list.append(
                    {
                        "id": sid,
                        "node": sc,
                        "limit_a": STATION_LIMIT_A,
                        "min_current_a": LOW_MIN_CURRENT_A if low_min[k] else MIN_CURRENT_A,
                        "connectors": [
                            {
                                "id": c1,
                                "limit_a": CONNECTOR_LIMIT_A,
                                "phases": 3,
                                "phase": PHASES[k % 3],
                            },
                            {
                                "id": c2,
                                "limit_a": CONNECTOR_LIMIT_A,
                                "phases": 3,
                                "phase": PHASES[(k + 1) % 3],
                            },
                        ],
                    }
                )
                connector_ids += [c1, c2]
                k += 1
    return Network(nodes, station_list, region_ids, connector_ids)


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Sessions:
    """Generated sessions as arrays, sorted by arrival then connector.

    Attributes
    ----------
    connector : numpy.ndarray
        Connector index (into :attr:`Network.connector_ids`).
    arrival_s, departure_s : numpy.ndarray
        Unix time [s] of plug-in and plug-out (integers).
    energy_kwh : numpy.ndarray
        Energy the car still needs at the later of its arrival and the grid start [kWh].
    phases : numpy.ndarray
        Phases the car charges on (1 or 3).
    car : numpy.ndarray
        EV model index (into the ``ev.models`` of the parameter file).
    half_hour : numpy.ndarray
        Local half-hour of arrival (0..47) of its arrival day.
    carried_over : numpy.ndarray
        True for a car that arrived before the grid start and is still plugged in.
    """

    connector: np.ndarray
    arrival_s: np.ndarray
    departure_s: np.ndarray
    energy_kwh: np.ndarray
    phases: np.ndarray
    car: np.ndarray
    half_hour: np.ndarray
    carried_over: np.ndarray


def _local_midnight_s(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0), TZ).timestamp())


def candidate_rate(
    days: list[dt.date], sessions_per_connector: float
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate arrival rate per connector and 15-minute slot over consecutive ``days``.

    A connector takes a car only when free, so with Poisson candidates at rate ``r(t)`` the
    accepted arrivals are ``a(t) = r(t)·(1 − B(t))``, where ``B(t)`` is the probability that the
    connector is taken (an M/G/1/1 loss system). ``B`` depends only on the accepted arrivals::

        B(t) = ∫_{t0}^{t} a(τ) · P(stay > t − τ | τ) dτ

    so choosing ``a = n·p_day`` (the ElaadNL arrival share of each day) gives ``B`` directly and
    ``r = a / (1 − B)``, slot by slot (``B`` averaged on three points per slot). The connector is
    free at the start of the first day.

    Parameters
    ----------
    days : list[datetime.date]
        Consecutive days.
    sessions_per_connector : float
        Accepted arrivals per connector and day [1/day].

    Returns
    -------
    rate : numpy.ndarray
        Expected candidates per connector in each slot [-], ``96 × len(days)``.
    slot_start_s : numpy.ndarray
        Start of each slot [s] after local midnight of the first day.
    """
    prm = load_params()
    t0 = _local_midnight_s(days[0])
    starts = [_local_midnight_s(d) - t0 for d in days]
    slot = np.arange(_SLOTS)
    slot_start_s = np.concatenate([s + slot * _SLOT_S for s in starts]).astype(float)
    accepted = sessions_per_connector * np.concatenate([prm.arrival_share(d) for d in days])
    sub = 3
    t = (slot_start_s[:, None] + (np.arange(sub) + 0.5) * _SLOT_S / sub).ravel()
    busy = np.zeros(t.size)
    for k, d in enumerate(days):
        model = day_model(d.weekday() >= 5).stay_h
        cells = slice(k * _SLOTS * sub, (k + 1) * _SLOTS * sub)
        tau = t[cells]
        half_hour = np.repeat(slot // 2, sub)
        weight = np.repeat(accepted[k * _SLOTS : (k + 1) * _SLOTS], sub) / sub
        lag_h = (t[:, None] - tau[None, :]) / 3600.0
        later = lag_h > 0
        surv = np.zeros_like(lag_h)
        hh = np.broadcast_to(half_hour, lag_h.shape)
        surv[later] = model.survival(hh[later], lag_h[later])
        busy += surv @ weight
    busy_slot = busy.reshape(-1, sub).mean(axis=1)
    if busy_slot.max() >= 0.97:
        raise ValueError(
            f"sessions_per_connector: {sessions_per_connector} keeps connectors taken "
            f"{busy_slot.max():.0%} of the time; choose fewer"
        )
    return accepted / (1.0 - busy_slot), slot_start_s


def sample_sessions(
    n_connectors: int,
    day: dt.date,
    rng: np.random.Generator,
    sessions_per_connector: float = SESSIONS_PER_CONNECTOR,
) -> Sessions:
    """Sessions on ``n_connectors`` connectors for ``day``, with the cars still plugged in at
    its local midnight from :data:`WARMUP_DAYS` warm-up days.

    Per connector, candidates arrive as a Poisson process at :func:`candidate_rate`, uniformly
    within their 15-minute slot; in time order a candidate that arrives before the previous
    accepted car has left is dropped. Stay and energy come from :func:`day_model` of the
    arrival's day type with standard-normal scores ``ε_stay`` and ``ε_energy`` correlated
    ``DayModel.rho`` (Gaussian copula). The energy is capped by :func:`cap_energy`. A
    carried-over car's energy is what it still needs at midnight after charging at
    :func:`car_power_kw` since its arrival. Times are whole seconds.

    Parameters
    ----------
    n_connectors : int
        Number of connectors.
    day : datetime.date
        The simulated day.
    rng : numpy.random.Generator
        Source of randomness.
    sessions_per_connector : float
        Mean number of arrivals per connector on the day [1/day].

    Returns
    -------
    Sessions
        Arrivals on ``day`` and earlier arrivals departing after its start.
    """
    prm = load_params()
    days = [day - dt.timedelta(days=WARMUP_DAYS - k) for k in range(WARMUP_DAYS + 1)]
    rate, slot_start_s = candidate_rate(days, sessions_per_connector)
    t0 = _local_midnight_s(days[0])
    grid_start = _local_midnight_s(day) - t0

    total_rate = float(rate.sum())
    counts = rng.poisson(total_rate, size=n_connectors)
    conn = np.repeat(np.arange(n_connectors), counts)
    n = conn.size
    slot = rng.choice(rate.size, size=n, p=rate / total_rate)
    arrival = (slot_start_s[slot] + np.floor(rng.random(n) * _SLOT_S)).astype(np.int64)
    z = rng.standard_normal((2, n))
    car = rng.choice(prm.car_share.size, size=n, p=prm.car_share)

    half_hour = (slot % _SLOTS) // 2
    stay_h = np.empty(n)
    energy = np.empty(n)
    for weekend in (False, True):
        on = np.array([d.weekday() >= 5 for d in days])[slot // _SLOTS] == weekend
        if on.any():
            model = day_model(weekend)
            eps = model.rho * z[0, on] + math.sqrt(1.0 - model.rho**2) * z[1, on]
            stay_h[on] = model.stay_h.value(half_hour[on], z[0, on])
            energy[on] = model.energy_kwh.value(half_hour[on], eps)
    stay_s = np.maximum(60, np.rint(stay_h * 3600.0)).astype(np.int64)
    departure = arrival + stay_s
    phases = prm.car_phases[car]
    power_kw = car_power_kw(car)
    energy = cap_energy(energy, stay_s / 3600.0, car)

    # thin per connector in time order: one vectorised pass per candidate rank
    order = np.lexsort((arrival, conn))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - np.repeat(first, counts)
    accept = np.zeros(n, dtype=bool)
    free_at = np.full(n_connectors, np.iinfo(np.int64).min)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max(initial=-1)) + 2))
    for k in range(bounds.size - 1):
        idx = order[by_rank[bounds[k] : bounds[k + 1]]]
        ok = arrival[idx] >= free_at[conn[idx]]
        accept[idx[ok]] = True
        free_at[conn[idx[ok]]] = departure[idx[ok]]

    keep = accept & (departure > grid_start)
    carried = arrival < grid_start
    charged = power_kw * np.maximum(grid_start - arrival, 0) / 3600.0
    energy = np.where(carried, np.maximum(energy - charged, 0.0), energy)
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((conn[idx], arrival[idx]))]
    return Sessions(
        connector=conn[idx],
        arrival_s=arrival[idx] + t0,
        departure_s=departure[idx] + t0,
        energy_kwh=np.round(energy[idx], 3),
        phases=phases[idx],
        car=car[idx],
        half_hour=half_hour[idx],
        carried_over=carried[idx],
    )


# --------------------------------------------------------------------------- DSO profiles


def local_hours(start_s: int, step_s: int, steps: int) -> np.ndarray:
    """Local (Europe/Amsterdam) clock time [h] at the start of each step from Unix ``start_s``."""
    out = np.empty(steps)
    for t in range(steps):
        local = dt.datetime.fromtimestamp(start_s + t * step_s, TZ)
        out[t] = local.hour + local.minute / 60.0 + local.second / 3600.0
    return out


def dso_profile(
    power_kw: np.ndarray, hours: np.ndarray, dt_h: float, dso_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A DSO's cap and target for a region from its uncontrolled power.

    ``cap = dso_scale · max(P)``, times :data:`DIP_FACTOR` for local hours in
    :data:`DIP_HOURS`; ``target ∝ 1 + TARGET_SWING · cos(2π (hour − 3) / 24)`` (the household
    valley at night is filled first) with the same energy as ``P`` over the grid, and never
    above the cap.

    Parameters
    ----------
    power_kw : numpy.ndarray
        Uncontrolled power of the region per step [kW].
    hours : numpy.ndarray
        Local clock time at the start of each step [h].
    dt_h : float
        Step length [h].
    dso_scale : float
        Cap as a share of the uncontrolled peak [-].

    Returns
    -------
    cap_kw, target_kw : numpy.ndarray
        Per step [kW].
    """
    dip = (hours >= DIP_HOURS[0]) & (hours < DIP_HOURS[1])
    cap = dso_scale * float(power_kw.max()) * np.where(dip, DIP_FACTOR, 1.0)
    shape = 1.0 + TARGET_SWING * np.cos(2.0 * np.pi * (hours - 3.0) / 24.0)
    target = float(power_kw.sum()) * shape / shape.sum()
    return cap, np.minimum(target, cap)


# --------------------------------------------------------------------------- scenario


FEASIBLE_MARGIN = 1.02
"""A raised cap or rating is the load of the minimum currents times this [-]."""


def make_limits_feasible(scenario: dict[str, Any], rounds: int = 5) -> int:
    """Raise DSO caps and subcluster ratings that the cars' minimum currents alone exceed.

    The greedy schedule gives every charging car at least its minimum and stays under every
    limit it can; wherever it still exceeds a ``dso_cap`` (per step) or a ``node_power_limit``
    (the rating, a single number), that limit is raised by :data:`FEASIBLE_MARGIN` times the
    excess (ratings in 5 kW steps). Repeated until greedy holds every limit or ``rounds`` pass.

    Returns
    -------
    int
        The number of limits raised (0 when the scenario was already feasible).
    """
    from optimizer.greedy import greedy_currents_a
    from optimizer.network import compile_network
    from optimizer.result import limit_violations
    from optimizer.scenario import parse_scenario

    raised = 0
    caps = {p["node"]: p for p in scenario["dso_profiles"] if "cap_kw" in p}
    nodes = {n["id"]: n for n in scenario["nodes"]}
    for _ in range(rounds):
        net = compile_network(parse_scenario(scenario))
        excess = [
            v
            for v in limit_violations(net, greedy_currents_a(net))
            if v["kind"] in ("dso_cap", "node_power_limit")
        ]
        if not excess:
            break
        for v in excess:
            extra = v["amount"] * FEASIBLE_MARGIN + 0.01
            if v["kind"] == "dso_cap":
                cap = caps[v["node"]]["cap_kw"]
                cap[v["step"]] = round(cap[v["step"]] + extra, 3)
            else:
                node = nodes[v["node"]]
                node["limit_kw"] = float(5 * math.ceil((node["limit_kw"] + extra) / 5))
            raised += 1
    return raised


def iso_local(unix_s: np.ndarray) -> list[str]:
    """ISO-8601 local (Europe/Amsterdam) times with offset for Unix times [s] (integers)."""
    if unix_s.size == 0:
        return []
    lo = dt.datetime.fromtimestamp(int(unix_s.min()), TZ).utcoffset()
    hi = dt.datetime.fromtimestamp(int(unix_s.max()), TZ).utcoffset()
    if lo is None or lo != hi:  # a DST change in between: per element
        return [dt.datetime.fromtimestamp(int(s), TZ).isoformat() for s in unix_s]
    off = int(lo.total_seconds())
    sign = "+" if off >= 0 else "-"
    suffix = f"{sign}{abs(off) // 3600:02d}:{abs(off) % 3600 // 60:02d}"
    text = np.datetime_as_string((unix_s + off).astype("datetime64[s]"), unit="s")
    return [s + suffix for s in text.tolist()]


def generate_scenario(
    stations: int,
    seed: int,
    date: dt.date | None = None,
    dso_scale: float = 0.6,
    step_s: int = 900,
    *,
    opt_out_share: float = OPT_OUT_SHARE,
    pause_consent_share: float = 0.0,
    sessions_per_connector: float = SESSIONS_PER_CONNECTOR,
    feasible: bool = True,
) -> dict[str, Any]:
    """A realistic ``gridcharge.scenario/1`` for one day of a Rotterdam-like network.

    Parameters
    ----------
    stations : int
        Number of two-connector stations.
    seed : int
        Seed of ``numpy.random.Generator(PCG64(seed))``; equal arguments give equal output.
    date : datetime.date, optional
        The day; the grid starts at its local midnight (Europe/Amsterdam) and spans 24 h.
        Weekend days use ElaadNL's weekend arrivals. Default :data:`DEFAULT_DATE`.
    dso_scale : float
        Each region's DSO cap as a share of its uncontrolled peak [-].
    step_s : int
        Grid step [s]; must divide a day.
    opt_out_share : float
        Share of sessions whose driver opted out of smart charging [-].
    pause_consent_share : float
        Share of the other sessions that consent to pausing [-].
    sessions_per_connector : float
        Mean arrivals per connector on the day [1/day].
    feasible : bool
        Raise caps and ratings that the minimum currents alone exceed
        (:func:`make_limits_feasible`); ``False`` keeps ``dso_scale`` × peak everywhere.

    Returns
    -------
    dict
        The scenario, JSON-serialisable (see ``docs/formats.md``).
    """
    if step_s <= 0 or _DAY_S % step_s:
        raise ValueError(f"step_s: must divide {_DAY_S} s (got {step_s})")
    for name, share in (
        ("opt_out_share", opt_out_share),
        ("pause_consent_share", pause_consent_share),
    ):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name}: must be within [0, 1] (got {share})")
    day = DEFAULT_DATE if date is None else date
    rng = np.random.Generator(np.random.PCG64(seed))
    net = build_network(stations, rng)
    ses = sample_sessions(len(net.connector_ids), day, rng, sessions_per_connector)
    n = ses.connector.size
    opt_out = rng.random(n) < opt_out_share
    pause = (rng.random(n) < pause_consent_share) & ~opt_out

    start_s = _local_midnight_s(day)
    width = max(6, len(str(n)))
    arrivals = iso_local(ses.arrival_s)
    departures = iso_local(ses.departure_s)
    conn_ids = net.connector_ids
    sessions = [
        {
            "id": f"s-{k + 1:0{width}d}",
            "connector": conn_ids[c],
            "arrival": a,
            "departure": d,
            "energy_kwh": e,
            "phases": ph,
            "opt_out": o,
            "pause_consent": pc,
        }
        for k, (c, a, d, e, ph, o, pc) in enumerate(
            zip(
                ses.connector.tolist(),
                arrivals,
                departures,
                ses.energy_kwh.tolist(),
                ses.phases.tolist(),
                opt_out.tolist(),
                pause.tolist(),
                strict=True,
            )
        )
    ]
    steps = _DAY_S // step_s
    scenario: dict[str, Any] = {
        "format": SCENARIO_FORMAT,
        "grid": {
            "start": dt.datetime.fromtimestamp(start_s, TZ).isoformat(),
            "step_s": step_s,
            "steps": steps,
        },
        "voltage_v": VOLTAGE_V,
        "nodes": net.nodes,
        "stations": net.stations,
        "sessions": sessions,
        "dso_profiles": [],
    }
    power = uncontrolled_node_power_kw(scenario)
    hours = local_hours(start_s, step_s, steps)
    for rid in net.region_ids:
        cap, target = dso_profile(power[rid], hours, step_s / 3600.0, dso_scale)
        scenario["dso_profiles"].append(
            {
                "node": rid,
                "cap_kw": np.round(cap, 3).tolist(),
                "target_kw": np.round(target, 3).tolist(),
            }
        )
    if feasible:
        make_limits_feasible(scenario)
    return scenario
