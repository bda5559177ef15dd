"""Under CI (``CI=true``), hypothesis draws the same examples on every run, so that a red build
points at a change and not at a newly drawn example; locally it keeps exploring."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")
