"""mkdocs hook: the site is the repository's own markdown, each file at its repository path.

README.md is the home page, docs/ the guide and the API reference, results/ the study reports
and their plots. Mounted at their own paths, the relative links between them (README ->
docs/layers.md, docs/study.md -> ../results/study_small.md) mean the same on GitHub and on the
site, and ``mkdocs build --strict`` checks every one of them.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

SITE = ("README.md", "docs/**/*.md", "docs/**/*.png", "results/*.md", "results/*.png")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Replace the files found in ``docs_dir`` by those of ``SITE``; keep the theme's."""
    root = Path(config.config_file_path).parent
    docs = Path(config.docs_dir)
    site = Files([f for f in files if f.abs_src_path is None or not Path(f.abs_src_path).is_relative_to(docs)])
    for pattern in SITE:
        for path in sorted(root.glob(pattern)):
            site.append(File(path.relative_to(root).as_posix(), str(root), config.site_dir, config.use_directory_urls))
    return site
