"""What the site profiles say together, and about a spec or the user's config.

The checks that only the set of profiles can make (a spec's sector, site names and datasets;
the config's [sites.X] entries), the profiles and config read together, and the account a
job is sent with. Split from :mod:`gateway.profiles`, which reads one profile at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.config import ACCOUNT_PATTERN, SiteAccess, UserConfig, load_config
from gateway.errors import ConfigError, ProfileError, SpecError
from gateway.home import aif_home_text
from gateway.pathtext import child_text
from gateway.profiles import ProfileSet, SiteProfile, known_site_names, load_profiles
from gateway.spec import JobSpec
from gateway.tomlcheck import did_you_mean

if TYPE_CHECKING:
    from pathlib import Path


def sector_vocabulary(profiles: Iterable[SiteProfile]) -> tuple[str, ...]:
    return tuple(sorted({sector for p in profiles for sector in p.sectors}))


def check_spec_against_profiles(spec: JobSpec, profiles: Mapping[str, SiteProfile]) -> None:
    """What only the profiles can tell: known sector, known site names, known datasets.

    A spec pinned to a site whose profile is broken gets that profile's error;
    excluding such a site is fine.
    """
    if spec.placement.site is not None and isinstance(profiles, ProfileSet):
        broken = profiles.broken_one(spec.placement.site)
        if broken is not None:
            raise ProfileError(broken.message)
    known_sites = known_site_names(profiles)
    if spec.job.sector is not None:
        known = sector_vocabulary(profiles.values())
        if spec.job.sector not in known:
            maybe = did_you_mean(spec.job.sector, known)
            raise SpecError(
                f"{spec.source}: job.sector: {spec.job.sector!r} is not a known sector; "
                f"{maybe}known sectors: {', '.join(known)}"
            )
    for key, names in (
        ("placement.site", [spec.placement.site] if spec.placement.site else []),
        ("placement.exclude", list(spec.placement.exclude)),
    ):
        for name in names:
            if name not in known_sites:
                maybe = did_you_mean(name, known_sites)
                raise SpecError(
                    f"{spec.source}: {key}: {name!r} is not a known site; "
                    f"{maybe}known sites: {', '.join(known_sites)}"
                )
    # Only a spec with inputs needs every site's catalogue (and so every profile read).
    catalogue = {d.name for p in profiles.values() for d in p.datasets} if spec.data.inputs else set()
    for index, dataset in enumerate(spec.data.inputs):
        if dataset not in catalogue:
            maybe = did_you_mean(dataset, sorted(catalogue))
            raise SpecError(
                f"{spec.source}: data.inputs[{index}]: {dataset!r} is not in any site's dataset "
                f"catalogue; {maybe}known datasets: {', '.join(sorted(catalogue)) or 'none'}"
            )


def stray_config_entries(config: UserConfig, profiles: Mapping[str, SiteProfile]) -> dict[str, str]:
    """The config's [sites.X] entries for which no profile exists: X -> that entry's problem.

    Such an entry is not used (and does not stop any other site from working).
    """
    known = known_site_names(profiles)
    return {
        name: (
            f"{config.sources.get(name, 'config')}: sites.{name}: {name!r} is not a known site; "
            f"{did_you_mean(name, known)}this entry is not used"
        )
        for name in config.sites
        if name not in known
    }


def check_config_sites(config: UserConfig, profiles: Mapping[str, SiteProfile]) -> UserConfig:
    """``config`` where a site that a stray [sites.X] entry was probably meant for carries its
    problem as a hint, so errors about that site (a missing account) say what went wrong."""
    known = known_site_names(profiles)
    sites = dict(config.sites)
    for name, problem in stray_config_entries(config, profiles).items():
        import difflib  # only a stray entry needs it: not imported at start-up

        # Only a close spelling: a hint on an unrelated site would mislead.
        for meant in difflib.get_close_matches(name, known, n=1):
            if meant not in config.sites:
                sites[meant] = replace(SiteAccess(), hint=problem)
    return replace(config, sites=sites)


def load_sites(home: str | Path | None = None) -> tuple[ProfileSet, UserConfig]:
    """The profiles and the user's config, checked against each other (:func:`check_config_sites`)."""
    profiles = load_profiles(home)
    return profiles, check_config_sites(load_config(home), profiles)


def resolve_account(profile: SiteProfile, access: SiteAccess) -> str | None:
    """The account to send, checked against the site's format; None when none is needed."""
    account = access.account
    if account is None:
        if profile.account_required:
            example = profile.account_example or "..."
            hint = f" ({access.hint})" if access.hint else ""
            config_file = child_text(aif_home_text(), "config.toml")
            raise ConfigError(
                f"site {profile.name} is not usable: it needs an account; add "
                f'[sites.{profile.name}] account = "{example}" to {config_file}{hint}'
            )
        return None
    if not re.fullmatch(ACCOUNT_PATTERN, account) or not re.fullmatch(profile.account_pattern, account):
        raise ConfigError(
            f"config: sites.{profile.name}.account: {account!r} is not allowed; "
            f"{profile.name} accounts look like {profile.account_example or profile.account_pattern!r}"
        )
    return account
