"""Signed exports from the command line: make a key pair, sign an export that is already published."""
from __future__ import annotations

from pathlib import Path

import click

from edgeae.cli.app import main
from edgeae.cli.options import json_option
from edgeae.cli.render import emit
from edgeae.contract.signing import generate_keys
from edgeae.exporter.signatures import sign_export


@main.command()
@click.argument("private_pem", type=click.Path(path_type=Path))
@click.argument("public_pem", type=click.Path(path_type=Path))
@json_option
@click.pass_context
def keygen(ctx: click.Context, private_pem: Path, public_pem: Path, as_json: bool) -> None:
    """Make an EC P-256 key pair for signed exports: PRIVATE_PEM (readable by you only) signs, PUBLIC_PEM goes to
    the devices. Existing files are never overwritten. Needs pip install 'edgeae[signing]'.

    \b
    Example:
      edgeae keygen signing.pem trusted.pem
      edgeae export runs/train --out exported --sign-key signing.pem
      edgeae score exported readings.csv --trusted-key trusted.pem
    """
    private, public = generate_keys(private_pem, public_pem)
    emit(ctx, {"private_key": str(private), "public_key": str(public)},
         [f"wrote {private} (private: keep it where exports are made) and {public} (public: give it to devices)"])


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--key", "key", type=click.Path(path_type=Path), required=True, metavar="PEM",
              help="The PEM EC private key to sign with (edgeae keygen makes one).")
@json_option
@click.pass_context
def sign(ctx: click.Context, export_dir: Path, key: Path, as_json: bool) -> None:
    """Sign an export that is already published: every file is checked against its manifest, then all of them
    (the manifest included) are signed into model.sig, replaced atomically (on failure the old one stays).

    \b
    Example:
      edgeae sign exported --key signing.pem
      model_signing verify key exported --signature exported/model.sig --public_key trusted.pem
    """
    signature = sign_export(export_dir, key)
    emit(ctx, {"export": str(export_dir), "signature": str(signature)}, [f"signed {export_dir}: {signature}"])
