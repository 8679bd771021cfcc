"""Monitoring: the status report everyone reads (CLI and Dagster UI) and alerts for stuck and failed files."""
