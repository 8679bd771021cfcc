"""Parse, validate and load one payload file in one transaction."""
