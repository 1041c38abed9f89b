"""Small Sphinx fixes for the book's site, loaded through ``sphinx: local_extensions`` in _config.yml.

Sphinx 7.4 registers an inline script that an extension adds after the builder starts twice
(once with ``filename=None``, once with ``filename=''`` in ``prepare_writing``), so every page
carried sphinx-thebe's ``const THEBE_JS_URL = ...`` twice, and the second copy raised
"SyntaxError: Identifier 'THEBE_JS_URL' has already been declared" in every reader's browser.
This extension drops exact duplicates from each page's scripts (the browser test in
tests/site/ fails on any JavaScript error, so it would notice if this ever stopped working).
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename), tuple(sorted((str(k), str(v)) for k, v in attributes.items())))


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: Sphinx restores the list from its own copy after each page


def setup(app):
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
