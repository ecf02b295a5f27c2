"""`aif render`: the batch script a spec would be submitted as at one site, nothing sent.

Part of the library's calls (:mod:`gateway.api` offers it as ``api.render``),
in a module of its own so that ``aif render`` loads the spec, config,
profile and rendering layers and nothing else: no site, ledger or federation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.home import local_user
from gateway.profile_rules import check_spec_against_profiles, load_sites, resolve_account
from gateway.profiles import get_profile
from gateway.rendering import RenderedJob, render_batch_script
from gateway.spec import load_spec

if TYPE_CHECKING:
    from pathlib import Path


def render(spec_path: str | Path, site: str, *, account: str | None = None) -> RenderedJob:
    """The batch script ``spec_path`` would be submitted as at ``site``."""
    spec = load_spec(spec_path)
    profiles, config = load_sites()
    check_spec_against_profiles(spec, profiles)
    profile = get_profile(profiles, site)
    access = config.access(site)
    if account is not None:
        access = replace(access, account=account)
    return render_batch_script(
        spec, profile, account=resolve_account(profile, access), user=access.user or local_user()
    )
