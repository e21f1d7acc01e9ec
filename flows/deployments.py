"""Serve the Prefect deployments of every flow in this folder, built from the project's settings.

`maquette up` runs this file as the `deployments` component: `python <paths.flows>/deployments.py
--project DIR`, with PREFECT_API_URL pointing at the platform's Prefect server. The deployment
names and schedules are listed in `maquette.platform.deployments`.
"""

from __future__ import annotations

import argparse
import logging

from maquette.config import load_settings
from maquette.platform.deployments import serve_deployments

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=None, help="Folder holding maquette.yaml.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve_deployments(load_settings(parser.parse_args().project))
