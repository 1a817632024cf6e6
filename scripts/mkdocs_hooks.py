"""MkDocs build hook: the pages generated from the code and the committed results
(``nas/reference.py``) join the site at build time, so they are never stale."""

from __future__ import annotations

from mkdocs.structure.files import File


def on_files(files, config):  # noqa: ANN001, ANN201
    from nas import reference

    for rel, text in reference.pages().items():
        files.append(File.generated(config, rel, content=text))
    for rel, path in reference.figures().items():
        files.append(File.generated(config, rel, abs_src_path=str(path)))
    return files
