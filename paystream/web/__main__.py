"""``python -m paystream.web``: a worker with the HTTP edge installed.

The same as ``paystream worker`` once ``paystream/worker.py`` calls ``install_web`` itself
(``install_web`` is idempotent, so both together are fine).
"""

from __future__ import annotations

import sys

import click

from paystream.config import get_settings
from paystream.logs import configure
from paystream.web import install_web, web_context
from paystream.worker import build_app, prepare
from streams.avro import codecs, registry_client


@click.command()
@click.option("--loglevel", default="info", show_default=True)
def main(loglevel: str) -> None:
    configure()
    settings = get_settings()
    prepare(settings)
    app, parts = build_app(settings)
    install_web(app, web_context(settings, codecs(registry_client(settings.registry_conf())),
                                 parts["payments_table"]))
    sys.argv = ["paystream-worker", "worker", "-l", loglevel]
    app.main()


if __name__ == "__main__":
    main()
