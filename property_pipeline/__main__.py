"""`python -m property_pipeline` is the same as the `property-pipeline` command."""

from property_pipeline.cli import main

main()
