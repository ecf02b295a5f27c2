"""Choosing a site when the spec names none. Pure: a function of specs and profiles.

This is the static part of placement: what a site can legally and physically
run (account, sensitivity, residency, partitions, datasets), ranked by where
the data already is and the site's sector focus. Live queue depth joins the
ranking through ``QueueSnapshot`` once site probing provides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import UserConfig
from gateway.errors import AifError, NoFit
from gateway.profiles import SiteProfile, resolve_account
from gateway.rendering import choose_partition
from gateway.spec import JobSpec


@dataclass(frozen=True)
class Placement:
    site: str
    why: str
    rejected: tuple[tuple[str, str], ...]  # (site, why not) for every other site


def site_misfit(spec: JobSpec, profile: SiteProfile, config: UserConfig) -> str | None:
    """Why ``profile``'s site cannot take ``spec`` (None when it can)."""
    if profile.name in spec.placement.exclude:
        return "excluded by the spec"
    if spec.placement.countries and profile.country not in spec.placement.countries:
        return f"in {profile.country}, the spec allows only {', '.join(spec.placement.countries)}"
    if not profile.accepts_sensitivity(spec.data.sensitivity):
        return f"accepts data up to {profile.max_sensitivity}, the job's is {spec.data.sensitivity}"
    missing = [d for d in spec.data.inputs if profile.dataset(d) is None]
    if missing:
        return f"does not hold dataset {', '.join(missing)}"
    if spec.environment.container and not profile.environment.container_exec:
        return "has no container runtime"
    if spec.environment.modules and not profile.environment.module_command:
        return "has no module system"
    try:
        resolve_account(profile, config.access(profile.name))
        choose_partition(spec, profile)
    except AifError as exc:
        return exc.message
    return None


def place(spec: JobSpec, profiles: Mapping[str, SiteProfile], config: UserConfig) -> Placement:
    """The best site for ``spec``, with the reason; NoFit listing every site's reason otherwise."""
    if spec.placement.site:
        profile = profiles[spec.placement.site]
        why_not = site_misfit(spec, profile, config)
        if why_not:
            raise NoFit(f"{spec.name} cannot run at {profile.name} (pinned by the spec): {why_not}")
        return Placement(site=profile.name, why="pinned by the spec", rejected=())
    candidates: list[tuple[tuple[int, int, str], str, str]] = []
    rejected: list[tuple[str, str]] = []
    for profile in sorted(profiles.values(), key=lambda p: p.name):
        why_not = site_misfit(spec, profile, config)
        if why_not:
            rejected.append((profile.name, why_not))
            continue
        sector_match = spec.job.sector is not None and spec.job.sector in profile.sectors
        data_local = bool(spec.data.inputs)
        reasons = []
        if data_local:
            reasons.append(f"holds {', '.join(spec.data.inputs)}")
        if sector_match:
            reasons.append(f"focuses on {spec.job.sector}")
        reasons.append("fits a partition")
        candidates.append(
            ((-int(data_local), -int(sector_match), profile.name), profile.name, ", ".join(reasons))
        )
    if not candidates:
        detail = "; ".join(f"{site}: {why}" for site, why in rejected)
        raise NoFit(f"no site can run {spec.name}: {detail}")
    candidates.sort()
    _, site, why = candidates[0]
    return Placement(site=site, why=why, rejected=tuple(rejected))
