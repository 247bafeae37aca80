"""The `dlaas` command group; each verb lives in the module of its subject."""

from __future__ import annotations

import click

OUTPUT = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlaas")
def cli() -> None:
    """Train deep-learning models on the GPUs your account may use.

    \b
    Start the platform on this machine:   dlaas up
    Upload training data:                 dlaas data upload ./data my-bucket
    Submit a run:                         dlaas train manifest.yml --code ./model
    Follow it:                            dlaas logs RUN -f
    Get its results:                      dlaas download RUN

    The platform address comes from DLAAS_ENDPOINT, or from the platform `dlaas up` started
    under DLAAS_HOME (default ~/.dlaas).
    """
