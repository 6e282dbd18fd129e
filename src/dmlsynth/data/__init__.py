"""Datasets: preparation (download, extraction, manifest) and loading."""
