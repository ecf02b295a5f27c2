"""The library behind every command: the CLI is a few lines over these calls."""

from __future__ import annotations

import getpass

from gateway.config import UserConfig
from gateway.errors import AifError, InvalidInput
from gateway.preview import render as render  # `aif render`'s call, in a module of its own
from gateway.profile_rules import load_sites, resolve_account, stray_config_entries
from gateway.profiles import SiteProfile, load_profile
from gateway.record import Record


class SiteSummary(Record):
    """One site as ``aif sites`` shows it, and whether this user can use it now (if not, why)."""

    name: str
    factory: str
    system: str
    country: str
    sectors: tuple[str, ...]
    max_sensitivity: str
    batch_system: str
    host: str
    port: int | None  # None for a site whose profile is broken
    gpus: str
    datasets: tuple[str, ...]
    usable: bool
    problem: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "factory": self.factory,
            "system": self.system,
            "country": self.country,
            "sectors": list(self.sectors),
            "max_sensitivity": self.max_sensitivity,
            "batch_system": self.batch_system,
            "host": self.host,
            "port": self.port,
            "gpus": self.gpus,
            "datasets": list(self.datasets),
            "usable": self.usable,
            "problem": self.problem,
        }


def login_user(profile: SiteProfile, config: UserConfig) -> str:
    """The login name at a site: the user's config, else the local user name."""
    return config.access(profile.name).user or getpass.getuser()


def site_problem(profile: SiteProfile, config: UserConfig) -> str:
    """Why a site cannot be used by this user now ('' when it can)."""
    try:
        resolve_account(profile, config.access(profile.name))
    except AifError as exc:
        return exc.message
    if profile.batch_system != "slurm":
        return f"runs {profile.batch_system}, which aif cannot submit to yet"
    return ""


def list_sites() -> list[SiteSummary]:
    """Every site with a profile, usable or not and why; broken profiles and config entries for
    no known site are listed as unusable, with their problem."""
    profiles, config = load_sites()
    summaries = [
        _unusable_summary(name, problem) for name, problem in stray_config_entries(config, profiles).items()
    ]
    summaries += [
        _unusable_summary(broken.name, f"site {broken.name} is not usable: {broken.message}")
        for broken in profiles.broken.values()
    ]
    for profile in profiles.values():
        problem = site_problem(profile, config)
        gpu_parts = sorted(
            {f"{p.gpus_per_node}x {p.gpu_model or 'GPU'}" for p in profile.partitions if p.gpus_per_node}
        )
        summaries.append(
            SiteSummary(
                name=profile.name,
                factory=profile.factory,
                system=profile.system,
                country=profile.country,
                sectors=profile.sectors,
                max_sensitivity=profile.max_sensitivity,
                batch_system=profile.batch_system,
                host=config.access(profile.name).host or profile.host,
                port=config.access(profile.name).port or profile.port,
                gpus=", ".join(gpu_parts) or "none",
                datasets=tuple(d.name for d in profile.datasets),
                usable=not problem,
                problem=problem,
            )
        )
    return sorted(summaries, key=lambda summary: summary.name)


def _unusable_summary(name: str, problem: str) -> SiteSummary:
    """A site that only has a name: its profile is broken, or only the config names it."""
    return SiteSummary(
        name=name,
        factory="",
        system="",
        country="",
        sectors=(),
        max_sensitivity="",
        batch_system="",
        host="",
        port=None,
        gpus="",
        datasets=(),
        usable=False,
        problem=problem,
    )


class ProfileCheck(Record):
    """One profile file checked by ``aif profile validate``: ok with a summary, or its error."""

    path: str
    ok: bool
    message: str


def validate_profiles(paths: list[str]) -> list[ProfileCheck]:
    results = []
    for path in paths:
        try:
            profile = load_profile(path)
        except InvalidInput as exc:
            results.append(ProfileCheck(path=path, ok=False, message=exc.message))
        else:
            results.append(
                ProfileCheck(
                    path=path, ok=True, message=f"{profile.name}: {len(profile.partitions)} partitions"
                )
            )
    return results
