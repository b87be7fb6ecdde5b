"""The dashboard as `make run` starts it: Streamlit's server on app.py, its workers started as soon as it listens.

    python -m ui.launch [--db URL] [any `streamlit run` flag: --server.port 8501, --server.address …]

Under a plain `streamlit run app.py` the workers start when a browser first renders a page, so runs
queued from the CLI waited for someone to open the dashboard; here they start with the server. The
flags and .streamlit/config.toml (127.0.0.1 unless --server.address says otherwise) are read as by
`streamlit run`, through its own command.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Optional[list[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--db" and i + 1 < len(args):
            os.environ["KDCORE_DB_URL"] = args[i + 1]  # the pages read the store's URL from here
            del args[i:i + 2]
            break
        if arg.startswith("--db="):
            os.environ["KDCORE_DB_URL"] = arg.split("=", 1)[1]
            del args[i]
            break

    from ui.workers import start_workers

    start_workers()  # once the server listens
    from streamlit.web import cli

    cli.main(["run", str(ROOT / "app.py"), *args], prog_name="streamlit")


if __name__ == "__main__":
    main()
